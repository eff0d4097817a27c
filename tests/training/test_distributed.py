import torch
from helpers import needs_torchrun, run_cli_in_two_cpu_processes
from safetensors.torch import load_file


@needs_torchrun
def test_two_cpu_processes_stay_in_sync(tiny_cache, tmp_path):
    """torchrun with 2 gloo processes (accelerate picks them up): DDP trains, the rank fingerprint check
    at every checkpoint passes. (`accelerate launch --cpu` starts a single process in this accelerate
    version, so it would not test DDP.)"""
    out = tmp_path / "ddp"
    result = run_cli_in_two_cpu_processes(
        [
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
    )
    assert "2 process(es)" in result.stdout
    state = torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 2
    weights = load_file(out / "checkpoint" / "generator.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
