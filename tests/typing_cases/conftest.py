"""Typing cases are for mypy only: pytest (with ``--doctest-modules``) must not import them."""

from __future__ import annotations

collect_ignore_glob = ["*.py"]
