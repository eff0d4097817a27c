"""Atomic file output: write to a temporary sibling, then rename, so no reader ever sees half a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyramidal_wan.errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    Works for files and for folders (a folder is moved into place with one rename after the old one,
    if any, is set aside), so an interrupted save never leaves a half-written checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def unwritable_reason(path: str | os.PathLike) -> str | None:
    """Why `path` (a file or folder to create, with any missing parents) cannot be written, or None.

    The nearest existing ancestor must be a folder in which an entry can be made; the probe is a temporary
    folder made and removed there, since permission bits alone do not tell (root, read-only mounts, /proc).
    """
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=parent))
            except OSError as err:
                return f"cannot write in {parent} ({err.strerror or err})"
            return None
    return None


def _check_parent(path: Path, option: str) -> None:
    reason = unwritable_reason(path)
    if reason:
        raise InputError(f"{option} {path}: {reason}; choose another path")


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check, before any work, that a file can be written at `path`: not a folder, no file above it."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is an existing folder; give a file path inside it")
    _check_parent(path, option)
    return path


def check_output_folder(
    folder: str | os.PathLike,
    is_replaceable,
    overwrite: bool = False,
    what: str = "an output folder",
    option: str = "--out",
) -> Path:
    """Check, before any work, that `folder` may be (re)written: absent, empty, `is_replaceable(folder)`
    (one of ours), or `overwrite` given; never a file or under a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file; give a folder")
    _check_parent(folder, option)
    if folder.is_dir() and any(folder.iterdir()) and not is_replaceable(folder) and not overwrite:
        raise InputError(
            f"{option} {folder} holds files and is not {what}; its contents would be replaced: pass "
            "--overwrite to do that, or choose another folder"
        )
    return folder
