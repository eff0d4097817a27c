"""Checkpoint folders that survive a kill at any instant, and the lock that keeps one run per folder.

A run folder holds its newest checkpoint as `checkpoint/` and up to `keep` older ones as
`checkpoint-step{N}/`. A save writes a temporary `.checkpoint.*` folder, fsyncs it, writes the completeness
marker `complete.json` (the step and every file's size) last, then renames: the live folder to its step
name, the new one to `checkpoint/`, and discards the oldest. A kill can stop it between any two of those
operations; the next run (holding the lock) calls `recover_checkpoints`, which promotes the newest complete
folder (marked, wherever the renames left it) to `checkpoint/` and removes the temporary leftovers.
A folder is discarded marker first, so a half-deleted one is never taken for complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyramidal_wan.errors import CheckpointError, InputError

MARKER = "complete.json"
LOCK_FILE = "run.lock"


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    step: int


def _rename(src: Path, dst: Path) -> None:
    """One atomic rename (the unit a kill cannot split)."""
    os.replace(src, dst)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_marker(folder: Path, step: int) -> None:
    """Flush every file of `folder` to disk, then record the step and file sizes: the folder is complete."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = path.stat().st_size
    marker = folder / MARKER
    marker.write_text(json.dumps({"step": step, "files": files}) + "\n")
    _fsync(marker)
    _fsync(folder)


def _marker_step(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / MARKER).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def discard(folder: Path) -> None:
    """Remove a checkpoint folder, marker first (a half-removed folder must not look complete)."""
    (folder / MARKER).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def find_checkpoints(
    run: str | os.PathLike, name: str = "checkpoint", legacy_step: Callable[[Path], int] | None = None
) -> list[Checkpoint]:
    """The complete checkpoints of `run`, newest first: `name/`, `name-step*/` and marked temporary folders.

    `legacy_step(folder)` reads the step of an unmarked `name/` or `.name.old/` written before markers
    existed (the old save renamed only complete folders to those names); without it they are ignored.
    """
    run = Path(run)
    found = []
    candidates = [run / name, *run.glob(f"{name}-step*"), *run.glob(f".{name}.*")]
    for folder in candidates:
        if not folder.is_dir():
            continue
        step = _marker_step(folder)
        if step is None and legacy_step is not None and folder.name in (name, f".{name}.old"):
            try:
                step = int(legacy_step(folder))
            except Exception:  # an unreadable legacy folder is not a checkpoint to resume from
                step = None
        if step is not None:
            found.append(Checkpoint(folder, step))
    # Newest first; at equal steps the live folder wins, then the step-named one.
    rank = {run / name: 0}
    return sorted(found, key=lambda c: (-c.step, rank.get(c.folder, 2 if c.folder.name[0] == "." else 1)))


def recover_checkpoints(
    run: str | os.PathLike, name: str = "checkpoint", legacy_step: Callable[[Path], int] | None = None
) -> Checkpoint | None:
    """Put the newest complete checkpoint at `run/name` and remove temporary leftovers of killed saves.

    Call it holding the run's lock, before resuming. Returns the live checkpoint, or None if there is none.
    """
    run = Path(run)
    found = find_checkpoints(run, name, legacy_step)
    live = run / name
    if found and found[0].folder != live:
        if live.is_dir():
            current = next((c for c in found if c.folder == live), None)
            if current is None:  # not complete: nothing to keep
                discard(live)
            else:
                _set_aside(run, name, current)
        _rename(found[0].folder, live)
    for leftover in run.glob(f".{name}.*"):
        discard(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    return Checkpoint(live, found[0].step) if found else None


def _set_aside(run: Path, name: str, checkpoint: Checkpoint) -> None:
    """Rename the live checkpoint to its step name (replacing a copy of the same step, if any)."""
    target = run / f"{name}-step{checkpoint.step}"
    if target.exists():
        discard(target)
    _rename(checkpoint.folder, target)


def remove_checkpoints(run: str | os.PathLike, name: str = "checkpoint") -> None:
    """Discard every checkpoint of `run` and the leftovers of killed saves (a run that starts over)."""
    run = Path(run)
    for folder in [run / name, *run.glob(f"{name}-step*"), *run.glob(f".{name}.*")]:
        discard(folder) if folder.is_dir() else folder.unlink(missing_ok=True)


def save_checkpoint_folder(
    run: str | os.PathLike,
    step: int,
    write: Callable[[Path], None],
    keep: int = 1,
    name: str = "checkpoint",
) -> Path:
    """Write a checkpoint of `step` with `write(folder)` and make it `run/name`, keeping `keep` older ones.

    No instant of a kill loses the previous checkpoint or leaves the new one looking complete when it is
    not (see the module docstring). Returns `run/name`.
    """
    tmp = new_checkpoint_folder(run, name)
    write(tmp)
    return commit_checkpoint_folder(run, tmp, step, keep, name)


def new_checkpoint_folder(run: str | os.PathLike, name: str = "checkpoint") -> Path:
    """An empty temporary folder in `run` for a save to write into (a leftover until it is committed).

    The two halves of `save_checkpoint_folder`, for a save that several processes write (FSDP2's shards):
    one process makes the folder, all write into it, then that one process commits it after all are done.
    """
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.", dir=run))


def commit_checkpoint_folder(
    run: str | os.PathLike, tmp: Path, step: int, keep: int = 1, name: str = "checkpoint"
) -> Path:
    """Mark the fully written `tmp` complete (the marker last), make it `run/name`, keep `keep` older ones."""
    run = Path(run)
    _write_marker(tmp, step)
    live = run / name
    if live.is_dir():
        previous = _marker_step(live)
        if previous is None:  # a legacy or incomplete live folder: the new one supersedes it
            discard(live)
        else:
            _set_aside(run, name, Checkpoint(live, previous))
    _rename(tmp, live)
    _fsync(run)
    older = [c for c in find_checkpoints(run, name) if c.folder.name.startswith(f"{name}-step")]
    for checkpoint in older[keep:]:
        tmp_name = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=run))
        _rename(checkpoint.folder, tmp_name / "x")  # out of the way in one rename, then deleted
        discard(tmp_name)
    return live


def verified_file(checkpoint: Checkpoint, file: str, run_name: str = "checkpoint") -> Path:
    """`checkpoint.folder / file` after checking it has the size its marker recorded."""
    path = checkpoint.folder / file
    try:
        recorded = json.loads((checkpoint.folder / MARKER).read_text())["files"].get(file)
    except (OSError, ValueError, KeyError):
        recorded = None  # a legacy checkpoint: no sizes to check
    if not path.is_file():
        raise corrupt_error(checkpoint, file, "missing", run_name)
    if recorded is not None and path.stat().st_size != recorded:
        reason = f"{path.stat().st_size} bytes, the save wrote {recorded}: truncated or overwritten"
        raise corrupt_error(checkpoint, file, reason, run_name)
    return path


def load_checked(checkpoint: Checkpoint, file: str, load: Callable[[Path], object], run_name="checkpoint"):
    """`load(path)` of one checkpoint file, any failure as a one-line `CheckpointError` naming the file."""
    path = verified_file(checkpoint, file, run_name)
    try:
        return load(path)
    except Exception as err:  # safetensors, torch and json each raise their own kinds for a bad file
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise corrupt_error(checkpoint, file, first_line, run_name) from err


def corrupt_error(
    checkpoint: Checkpoint, file: str, reason: str, name: str = "checkpoint"
) -> CheckpointError:
    """'FILE is corrupt (REASON)', offering the newest older complete checkpoint of the run, if any."""
    run = checkpoint.folder.parent
    older = [c for c in find_checkpoints(run, name) if c.step < checkpoint.step]
    if older:
        offer = (
            f"the older complete checkpoint {older[0].folder} (step {older[0].step}) is intact: delete "
            f"{checkpoint.folder} to continue from it"
        )
    else:
        offer = f"no older complete checkpoint is kept: delete {checkpoint.folder} to start over"
    return CheckpointError(f"{checkpoint.folder / file} is corrupt ({reason}); {offer}")


@contextmanager
def run_lock(run: str | os.PathLike) -> Iterator[Path]:
    """Hold `run/run.lock` (an exclusive flock, with this PID written in it) for the duration of a run.

    A second process gets a one-line `InputError` naming the holder's PID. The operating system drops the
    lock when its holder dies, so the lock file a killed run leaves behind is simply taken over.
    """
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise InputError(f"run folder {run} is a file; pass a folder as train.out")
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().split() or ["unknown"]
            host = f" on {holder[1]}" if len(holder) > 1 else ""
            raise InputError(
                f"{run} is in use by another run (PID {holder[0]}{host}); wait for it to finish, stop it, "
                "or pass another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing drops the flock
