"""Multi-process generation through diffusers' context parallelism (pipelines/parallel.py)."""

import os

import pytest
import torch
from helpers import needs_torchrun, run_in_two_cpu_processes

from pyramidal_wan.cli import main
from pyramidal_wan.errors import InputError
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pipelines.parallel import check_context_parallel, stage_tokens
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.family import assemble_toy_pipeline

WORKER = os.path.join(os.path.dirname(__file__), "context_parallel_worker.py")


@pytest.fixture(scope="module")
def pyramidal_folder(tmp_path_factory):
    """A random toy pipeline with a 3-stage resolution pyramid: 320 / 48 / 8 tokens at 17x64x64."""
    return assemble_toy_pipeline(tmp_path_factory.mktemp("cp") / "model", pyramid_config=PyramidConfig())


@needs_torchrun
@pytest.mark.slow
def test_two_processes_sample_the_same_video_as_one(pyramidal_folder, tmp_path):
    """Ulysses attention over 2 gloo processes, through all three stages of a pyramidal schedule and the
    stage transitions between them, gives one process's latents within float32 tolerance."""
    schedule = "1-1-1"
    run_in_two_cpu_processes([WORKER, str(pyramidal_folder), str(tmp_path / "cp.pt"), "ulysses", schedule])
    split = torch.load(tmp_path / "cp.pt", weights_only=True)
    pipe = PyramidalWanPipeline.from_pretrained(pyramidal_folder)
    pipe.set_progress_bar_config(disable=True)
    whole = pipe(
        "a red circle", schedule=schedule, output_type="latent", generator=torch.Generator().manual_seed(0)
    ).frames
    assert split.shape == whole.shape
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-5)


def test_token_counts_and_heads_must_divide(pyramidal_folder):
    plan = PyramidalWanPipeline.plan_from_folder(pyramidal_folder, schedule="2-2-1")
    assert stage_tokens(plan) == {0: 320, 1: 48, 2: 8}
    check_context_parallel(plan, "ulysses", 4, num_heads=4)  # every stage and the heads split 4 ways
    with pytest.raises(InputError, match="stage 2 has 8 tokens, which do not split evenly over 16 processes"):
        check_context_parallel(plan, "ring", 16, num_heads=4)
    with pytest.raises(InputError, match="stage 0 has 320 tokens, .* dividing 8"):
        check_context_parallel(plan, "ring", 3, num_heads=4)
    # The plain schedule runs only the full-resolution stage: 16 processes split its 320 tokens.
    check_context_parallel(
        PyramidalWanPipeline.plan_from_folder(pyramidal_folder, schedule="0-0-2"), "ring", 16, 4
    )
    with pytest.raises(InputError, match="splits the 4 attention heads"):
        check_context_parallel(plan, "ulysses", 8, num_heads=4)


def test_cli_checks_before_loading(pyramidal_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    args = ["generate", "a red circle", "--model", str(pyramidal_folder), "--out", str(tmp_path / "v.mp4")]
    assert main([*args, "--context-parallel", "ulysses"]) == 2
    assert "stage 0 has 320 tokens" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*args, "--context-parallel", "ulysses"]) == 2
    assert "--context-parallel needs GPUs" in capsys.readouterr().err
    assert not (tmp_path / "v.mp4").exists()
