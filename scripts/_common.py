"""What the model-building scripts share: the model folder a rebuild replaces, checked and kept.

``build_placeholder.py`` and ``build_bge_unit_variance.py`` import it (``python scripts/<script>`` puts
``scripts/`` first on ``sys.path``). A rebuild saves the model with :meth:`GaussianEncoder.save_pretrained`,
which replaces the folder as a whole; the files it does not write itself (the model card, calibrations fitted
on the model, anything added by hand) are written again inside the same save, with their permission bits.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from kl_retrievers._config import is_saved_encoder
from kl_retrievers.encoder import GaussianEncoder


def out_path(text: str) -> Path:
    """The ``--out`` argument as a path; an empty one (which would mean the working folder) is refused.

    Raises:
        argparse.ArgumentTypeError: ``text`` is empty or blank.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} is an empty path; give the model folder to write (a saved model, or a new or empty folder)"
        )
    return Path(text).expanduser()


def parse_out(argv: list[str] | None, *, description: str | None, default: Path) -> tuple[Path, list[str]]:
    """Parse a model build's command line (``--help``, ``--out``) and check ``--out`` before anything is built.

    Returns:
        The folder to (re)write and its names (:func:`model_folder_entries`).
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=out_path,
        default=default,
        help="the model folder to (re)write: a saved model, or a new or empty folder (default: %(default)s)",
    )
    out = parser.parse_args(argv).out
    return out, model_folder_entries(out, default=default)


def model_folder_entries(folder: Path, *, default: Path) -> list[str]:
    """The names in ``folder``, checked before anything is built or read; ``[]`` for a new path.

    A rebuild may replace a saved model folder (or fill a new or empty one) that holds regular files only:
    a sub-folder would be deleted, and a symbolic link would come back as a copy of the file it points to
    (or fail to, when it is broken). ``folder`` itself must not be a symbolic link: the save
    (:meth:`GaussianEncoder.save_pretrained`) would follow it and rewrite the folder it points to, which a
    rebuild does only when that folder is named.

    Args:
        folder: The ``--out`` folder.
        default: The script's default ``--out`` (the shipped model), for the messages.

    Raises:
        SystemExit: ``folder`` is a symbolic link, exists and is not a folder, is a non-empty folder that
            is not a saved model, or holds a symbolic link, a sub-folder or another entry that is not a
            regular file (the message names them and what ``--out`` takes).
    """
    takes = f"--out takes a saved model folder (default: {default}) or a new or empty folder"
    if folder.is_symlink():  # save_pretrained would follow it: a rebuild rewrites only a folder it is named
        real = os.path.realpath(folder)
        raise SystemExit(
            f"--out {folder} is a symbolic link (to {os.readlink(folder)}); a rebuild writes only a folder named "
            f"directly, and would write {real} through the link. Give that folder itself or a new path ({takes})"
        )
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise SystemExit(f"--out {folder} exists and is not a folder; {takes}")
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    names = [entry.name for entry in entries]
    if names and not is_saved_encoder(folder):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise SystemExit(
            f"--out {folder} is not a saved model and is not empty ({shown}): the rebuild replaces the folder "
            f"as a whole and would delete them; {takes}"
        )
    links = [entry.name for entry in entries if entry.is_symlink()]
    if links:
        raise SystemExit(
            f"{folder} holds the symbolic links {links}, which a rebuild would replace by copies of their targets "
            "(or fail on, when broken); replace each by the file itself, or move it out first"
        )
    folders = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    if folders:
        raise SystemExit(f"{folder} holds the folders {folders}, which a rebuild would delete; move them first")
    others = [entry.name for entry in entries if not entry.is_file(follow_symlinks=False)]
    if others:
        raise SystemExit(
            f"{folder} holds {others}, which are not regular files and a rebuild would delete; move them first"
        )
    return names


def save_keeping_files(encoder: GaussianEncoder, folder: Path, names: list[str]) -> list[str]:
    """Save ``encoder`` (as a delta) to ``folder``, keeping the files ``names`` that it does not write itself.

    Only those files are read (the model's own config, weights and tokenizer are rewritten, never read); each
    is written again inside the same atomic save, then given back its permission bits.

    Args:
        encoder: The rebuilt model.
        folder: The folder checked by :func:`model_folder_entries`.
        names: What :func:`model_folder_entries` returned.

    Returns:
        The names of the files kept.
    """
    own = encoder._saved_file_names()  # config, weights, tokenizer: rewritten; everything else is kept
    kept = {
        name: ((folder / name).read_bytes(), stat.S_IMODE(os.lstat(folder / name).st_mode))
        for name in names
        if name not in own
    }
    encoder.save_pretrained(
        folder, include_backbone=False, extra_files={name: data for name, (data, _) in kept.items()}
    )
    for name, (_, mode) in kept.items():
        os.chmod(folder / name, mode)
    return sorted(kept)
