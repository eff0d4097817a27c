import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file


@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
    reason="accelerate CLI not installed",
)
def test_two_cpu_processes_stay_in_sync(tiny_cache, tmp_path):
    """`accelerate launch` with 2 CPU processes: DDP trains, the trainer's fingerprint check passes."""
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    out = tmp_path / "ddp"
    cmd = [
        launcher,
        "launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--cpu",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "pyramidal_wan.cli",
        "finetune",
        f"data.cache={tiny_cache}",
        f"train.out={out}",
        "train.steps=2",
        "train.batch_size=3",
        "train.checkpoint_every=1",
        "model.pipeline=None",
        "objective.name=pyramidal",
        "train.threads=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 2
    assert all(
        torch.isfinite(t).all() for t in load_file(out / "checkpoint" / "generator.safetensors").values()
    )
