"""The refusal of a checkpoint folder that holds something else, shared by the training loops and the CLI.

Torch-free, so that ``kl-retrievers train`` checks its ``--checkpoint-dir`` before torch loads; each caller
names the folder and the flags its own way (:func:`kl_retrievers.training.trainer.check_checkpoint_folder`,
:func:`kl_retrievers.training.cli.check_checkpoint_dir`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from kl_retrievers._io import check_replace_target

logger = logging.getLogger(__name__)


def refuse_other_folder(
    folder: Path,
    *,
    is_ours: Callable[[Path], bool],
    overwrite: bool,
    flag: str,
    where: str,
    resume_as: str | None,
) -> None:
    """:func:`~kl_retrievers._io.check_replace_target` for a checkpoint folder, its message led by ``where``.

    Args:
        folder: The checkpoint folder (a symbolic link there is judged as the link, never followed).
        is_ours: Whether a non-empty folder is an earlier checkpoint.
        overwrite: Replace anything there.
        flag: How to ask for ``overwrite``, for the message.
        where: What the message starts with (the folder as the caller names it).
        resume_as: For a resume: how to name the folder a link points to instead (appended to "pass that
            folder"); ``None`` for a new run.

    Raises:
        ValueError: As :func:`~kl_retrievers._io.check_replace_target`, with ``where`` first.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> options = {"is_ours": lambda p: False, "overwrite": False, "flag": "-f", "resume_as": None}
        >>> refuse_other_folder(folder, where="here", **options)  # empty: nothing to lose
        >>> _ = (folder / "notes.txt").write_text("mine")
        >>> refuse_other_folder(folder, where="here", **options)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: here: ...
    """
    try:
        check_replace_target(
            folder,
            is_ours=is_ours,
            what="a training checkpoint (it has no state.json)",
            overwrite=overwrite,
            flag=flag,
        )
    except ValueError as exc:
        hint = ""
        if resume_as is not None and folder.is_symlink():
            hint = f"; to resume from the checkpoint the link points to, pass that folder{resume_as}"
        raise ValueError(f"{where}: {exc}{hint}") from None
