"""MkDocs hooks (``hooks:`` in mkdocs.yml): Sphinx cross-reference roles in the API reference.

The docstrings cross-reference with Sphinx roles (``:class:`~kl_retrievers.gaussian.Gaussians```), which
mkdocstrings' Google style leaves as they are: the page showed ``:class:Gaussians`` as text. The role's
backquoted target arrives rendered as ``:class:<code>~kl_retrievers.gaussian.Gaussians</code>``; this hook
turns that into the code alone, as Sphinx shows it (``~`` keeps the last name, ``Title <target>`` the title,
``!`` only strips), linked to the target's entry when the site documents it. tests/test_docs_api_reference.py
tests :func:`sphinx_roles`.
"""

from __future__ import annotations

import html
import re
from typing import Any

#: The roles the docstrings use (``:py:class:`` is the same as ``:class:``).
ROLES = ("class", "meth", "func", "data", "attr", "mod", "exc", "obj", "const", "type")
ROLE = re.compile(rf":(?:py:)?(?:{'|'.join(ROLES)}):<code>([^<]*)</code>")
#: A heading mkdocstrings writes for a documented object: its id is the object's full dotted path.
OBJECT_ID = re.compile(r'<h[1-6] id="([A-Za-z_][\w.]*)"')
#: The ``<div>`` mkdocstrings opens each documented module in, just before its heading.
MODULE_ID = re.compile(r'<div class="doc doc-object doc-module">\s*<h[1-6] id="([A-Za-z_][\w.]*)"')
EXPLICIT_TITLE = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.S)


def _target_and_title(text: str) -> tuple[str, str]:
    """``(target, shown text)`` of a role's content as Sphinx reads it."""
    text = html.unescape(text).strip()
    explicit = EXPLICIT_TITLE.match(text)
    if explicit and explicit.group(1):
        return explicit.group(2).strip().lstrip("~!"), explicit.group(1)
    target = text.lstrip("~!")
    return target, (target.rsplit(".", 1)[-1] if text.startswith("~") else target)


def _resolve(target: str, context: str | None, ids: set[str], modules: frozenset[str] = frozenset()) -> str | None:
    """The documented object ``target`` names, seen from the object documented at ``context``.

    As Sphinx looks names up: the name as written, then under the enclosing object and its parents (the
    class, then its module, ...), then the only documented object whose path ends with it, then (for a
    re-export such as ``kl_retrievers.load_model``) the only one of its last name in its top package. A bare
    name (no dot) found nowhere on that path matches by its ending only an object defined at the top of one
    of ``modules`` (the documented modules): ``:attr:`client``` under one class is not another class's
    ``client``.
    """
    if target in ids:
        return target
    parts = context.split(".") if context else []
    while parts:
        candidate = ".".join([*parts, target])
        if candidate in ids:
            return candidate
        parts.pop()
    ending = [i for i in ids if i.endswith("." + target)]
    if "." not in target:
        ending = [i for i in ending if i.rsplit(".", 1)[0] in modules]
    if len(ending) == 1:
        return ending[0]
    if "." in target:  # a re-export (kl_retrievers.load_model): the one object of that name in that package
        package, name = target.split(".", 1)[0], target.rsplit(".", 1)[-1]
        ending = [i for i in ids if i.startswith(package + ".") and i.endswith("." + name)]
        if len(ending) == 1:
            return ending[0]
    return None


def sphinx_roles(content: str) -> str:
    """``content`` (a page's HTML) with each Sphinx role shown as its code, linked when documented.

    A target documented on the page (a mkdocstrings heading id) becomes an autorefs reference to it; another
    dotted target an optional one (autorefs links it if any page documents it, else keeps the text); an
    unknown bare name, or one that is only a member of another class, stays plain code.

    Examples:
        >>> sphinx_roles(':class:<code>~a.b.C</code> and :func:<code>f</code>')
        '<autoref identifier="a.b.C" optional><code>C</code></autoref> and <code>f</code>'
    """
    ids = [(m.start(), m.group(1)) for m in OBJECT_ID.finditer(content)]
    known = {i for _, i in ids}
    modules = frozenset(MODULE_ID.findall(content))

    def replace(match: re.Match[str]) -> str:
        target, title = _target_and_title(match.group(1))
        target = target.removesuffix("()")
        code = f"<code>{html.escape(title, quote=False)}</code>"
        context = next((i for start, i in reversed(ids) if start < match.start()), None)
        found = _resolve(target, context, known, modules)
        if found is None and "." in target:
            found = target  # maybe documented on another page; optional: no warning when not
        if found is None:
            return code
        return f'<autoref identifier="{html.escape(found)}" optional>{code}</autoref>'

    return ROLE.sub(replace, content)


def on_page_content(content: str, **kwargs: Any) -> str:
    """MkDocs ``on_page_content`` hook: :func:`sphinx_roles` on every page."""
    return sphinx_roles(content)
