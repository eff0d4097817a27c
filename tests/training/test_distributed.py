import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

LAUNCHER = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(LAUNCHER), reason="torchrun not installed beside this Python")
def test_two_cpu_processes_stay_in_sync(tiny_cache, tmp_path):
    """torchrun with 2 gloo processes (accelerate picks them up): DDP trains, the rank fingerprint check
    at every checkpoint passes. (`accelerate launch --cpu` starts a single process in this accelerate
    version, so it would not test DDP.)"""
    out = tmp_path / "ddp"
    cmd = [
        LAUNCHER,
        "--nproc_per_node",
        "2",
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    state = torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 2
    weights = load_file(out / "checkpoint" / "generator.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
