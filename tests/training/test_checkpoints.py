"""Nothing lost, nothing half-done: faults inside a checkpoint save, leftovers, corrupt files, run locks."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import tiny_train_config
from safetensors.torch import load_file

from pyramidal_wan.cli import main
from pyramidal_wan.errors import CheckpointError
from pyramidal_wan.training.trainer import export_checkpoint, train
from pyramidal_wan.utils import checkpoints


class Killed(BaseException):
    """Stands for a kill -9: nothing catches it and no cleanup of the save runs."""


def tiny_config(cache, out, *overrides):
    return tiny_train_config(cache, out, "train.steps=4", "train.ema=0.9", *overrides)


def fault_points(monkeypatch):
    """Wrap the save's steps (each rename, and the marker write); returns the list they append to and
    `arm(k)`, which makes the k-th step (0-based) raise `Killed` instead of running."""
    seen, armed = [], {"at": None}
    rename, mark = checkpoints._rename, checkpoints._write_marker

    def step(label, fn, *args):
        seen.append(label)
        if len(seen) - 1 == armed["at"]:
            raise Killed(label)
        fn(*args)

    monkeypatch.setattr(
        checkpoints, "_rename", lambda a, b: step(f"rename {a.name} -> {b.name}", rename, a, b)
    )
    monkeypatch.setattr(checkpoints, "_write_marker", lambda f, s: step(f"marker of step {s}", mark, f, s))
    return seen, lambda k: armed.update(at=k)


def assert_same_weights(a, b):
    for name in ("generator.safetensors", "ema.safetensors"):
        x, y = load_file(a / "checkpoint" / name), load_file(b / "checkpoint" / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def resume_after_fault(cache, out, monkeypatch, at):
    seen, arm = fault_points(monkeypatch)
    arm(at)
    with pytest.raises(Killed):
        train(tiny_config(cache, out), progress=False)
    monkeypatch.undo()
    train(tiny_config(cache, out), progress=False)
    return seen[-1]


def test_a_fault_inside_the_rename_window_resumes_to_identical_weights(tiny_cache, tmp_path, monkeypatch):
    """The second save: marker, live -> checkpoint-step1, new -> checkpoint. A fault between the renames
    leaves no checkpoint/ at all; the resume must find step 2 in the temporary folder, not restart."""
    seen, _ = fault_points(monkeypatch)
    straight = train(tiny_config(tiny_cache, tmp_path / "straight"), progress=False)
    monkeypatch.undo()
    window = seen.index("rename checkpoint -> checkpoint-step1") + 1  # before new -> checkpoint
    assert seen[window].endswith("-> checkpoint")
    out = tmp_path / "killed"
    assert resume_after_fault(tiny_cache, out, monkeypatch, window).endswith("-> checkpoint")
    assert_same_weights(straight, out)
    leftovers = sorted(p.name for p in out.iterdir() if "checkpoint" in p.name)
    assert leftovers == ["checkpoint", "checkpoint-step3"]  # temporaries removed, one older kept


@pytest.mark.slow
def test_a_fault_at_every_step_of_every_save_resumes_to_identical_weights(tiny_cache, tmp_path, monkeypatch):
    seen, _ = fault_points(monkeypatch)
    straight = train(tiny_config(tiny_cache, tmp_path / "straight"), progress=False)
    monkeypatch.undo()
    for k in range(len(seen)):
        out = tmp_path / f"fault{k}"
        resume_after_fault(tiny_cache, out, monkeypatch, k)
        assert_same_weights(straight, out)
        assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint")]


def test_temporary_folders_of_killed_saves_are_removed_on_the_next_start(tiny_cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(tiny_cache, out, "train.steps=1"), progress=False)
    # Killed while writing the next save (before its marker): an incomplete temporary folder stays.
    monkeypatch.setattr(checkpoints, "_write_marker", lambda folder, step: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        train(tiny_config(tiny_cache, out, "train.steps=2"), progress=False)
    monkeypatch.undo()
    (out / ".checkpoint.stale").mkdir()
    (out / ".checkpoint.stale" / "generator.safetensors").write_bytes(b"half")
    assert len(list(out.glob(".checkpoint.*"))) == 2
    train(tiny_config(tiny_cache, out, "train.steps=2"), progress=False)
    assert list(out.glob(".checkpoint.*")) == []
    assert torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)["step"] == 2


def test_keep_checkpoints_sets_how_many_older_ones_stay(tiny_cache, tmp_path):
    train(tiny_config(tiny_cache, tmp_path / "two", "train.keep_checkpoints=2"), progress=False)
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint*")) == [
        "checkpoint",
        "checkpoint-step2",
        "checkpoint-step3",
    ]
    train(tiny_config(tiny_cache, tmp_path / "none", "train.keep_checkpoints=0"), progress=False)
    assert [p.name for p in (tmp_path / "none").glob("checkpoint*")] == ["checkpoint"]


@pytest.mark.parametrize("name", ["generator.safetensors", "ema.safetensors"])
def test_a_corrupt_weight_file_names_itself_and_offers_the_older_checkpoint(
    tiny_cache, tmp_path, capsys, name
):
    out = tmp_path / "run"
    train(tiny_config(tiny_cache, out), progress=False)
    file = out / "checkpoint" / name
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # truncated
    offer = f"{out / 'checkpoint-step3'} (step 3) is intact: delete {out / 'checkpoint'}"
    for argv in (
        ["finetune", f"data.cache={tiny_cache}", f"train.out={out}", "train.steps=5", "train.ema=0.9"],
        ["export", "--run", str(out)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{file} is corrupt" in err and offer in err and len(err.strip().splitlines()) == 1
    # Taking the offer: the older checkpoint is resumed from.
    file.parent.rename(tmp_path / "set-aside")
    folder, step = export_checkpoint(tiny_config(tiny_cache, out))
    assert step == 3 and (folder / "transformer" / "config.json").is_file()


def test_a_corrupt_critic_file_in_distill_names_itself(tiny_cache, tmp_path, capsys):
    out = tmp_path / "dmd"
    argv = [
        "distill",
        "--method=dmd",
        f"data.cache={tiny_cache}",
        f"train.out={out}",
        "train.batch_size=2",
        "train.steps=2",
        "train.checkpoint_every=1",
        "model.pipeline=None",
        "objective.schedule=0-0-2",
        "objective.critic_ratio=2",
    ]
    assert main(argv) == 0
    file = out / "checkpoint" / "critic.safetensors"
    file.write_bytes(b"{}" + file.read_bytes()[2:])  # same size, broken header
    assert main([*argv, "train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert f"{file} is corrupt" in err and f"{out / 'checkpoint-step1'} (step 1) is intact" in err


def test_a_corrupt_file_without_an_older_checkpoint_says_so(tiny_cache, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_cache, out, "train.keep_checkpoints=0"), progress=False)
    (out / "checkpoint" / "generator.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="no older complete checkpoint is kept"):
        train(tiny_config(tiny_cache, out, "train.steps=5"), progress=False)


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pyramidal_wan.utils.checkpoints import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def test_a_second_run_on_a_folder_refuses_and_a_dead_holder_is_taken_over(tiny_cache, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["finetune", f"data.cache={tiny_cache}", f"train.out={out}", "train.steps=1"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"in use by another run (PID {holder.pid}" in err and len(err.strip().splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing written
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / "run.lock").read_text().split()[0] == str(holder.pid)  # the dead holder's lock is left
    assert main([*argv, "model.pipeline=None"]) == 0  # and taken over
    assert (out / "checkpoint" / "complete.json").is_file()


def test_export_refuses_a_folder_that_is_not_a_model_folder(tiny_cache, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(tiny_cache, out, "train.steps=1"), progress=False)
    target = tmp_path / "papers"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    assert main(["export", "--run", str(out), "--out", str(target)]) == 2
    assert "holds files and is not a model folder" in capsys.readouterr().err
    assert (target / "thesis.tex").read_text() == "years of work"
    assert main(["export", "--run", str(out), "--out", str(out / "model")]) == 0  # a model folder: replaced
    assert main(["export", "--run", str(out), "--out", str(target / "thesis.tex")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["export", "--run", str(out), "--out", str(target), "--overwrite"]) == 0
    assert not (target / "thesis.tex").exists() and (target / "transformer" / "config.json").is_file()


def test_a_copied_run_folder_refers_to_itself(tiny_cache, tmp_path, capsys):
    original, copy = tmp_path / "run", tmp_path / "copy"
    train(tiny_config(tiny_cache, original, "train.steps=2"), progress=False)
    shutil.copytree(original, copy)
    shutil.rmtree(original / "checkpoint")  # the original moves on; the copy keeps step 2
    train(tiny_config(tiny_cache, original, "train.steps=1", "train.keep_checkpoints=0"), progress=False)
    assert main(["export", "--run", str(copy)]) == 0
    assert f"exported step 2 of {copy} to {copy / 'model-step2'}" in capsys.readouterr().out
    assert not (original / "model-step2").exists()


def test_no_resume_discards_the_old_checkpoints(tiny_cache, tmp_path):
    """Starting over must not leave the old run's later steps to be taken for the newest checkpoint."""
    out = tmp_path / "run"
    train(tiny_config(tiny_cache, out), progress=False)
    train(tiny_config(tiny_cache, out, "train.steps=2"), resume=False, progress=False)
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint", "checkpoint-step1"]
    assert torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)["step"] == 2
