"""What the flow-matching objectives feed the network, seen through a recording stub: one call per stage
group with that stage's tokens, sigmas inside the stage's segment, the frozen original model on the same
inputs, and the pyramidal loss equal to L_pyr recomputed from the same draws (METHOD.md 4.2, 4.4, 4.7).
The timing side of the same question is benchmarks/bench_training.py."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyramidal_wan.training.config import load_config
from pyramidal_wan.training.methods import build_objective

# Toy latents 16x5x16x16 and its stages 16x3x8x8, 16x2x4x4: 320 / 48 / 8 tokens at patch (1, 2, 2).
STAGE_SHAPES = [(16, 5, 16, 16), (16, 3, 8, 8), (16, 2, 4, 4)]
STAGE_TOKENS = [320, 48, 8]
BATCH = 6


class Recorder(nn.Module):
    """A velocity-model stub, `x * scale`, that records every call."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, x, sigma, encoder_hidden_states, attention_kwargs=None):
        self.calls.append(
            {"x": x.detach().clone(), "sigma": sigma.detach().clone(), "embeds": encoder_hidden_states}
        )
        return x * self.scale


def tokens(x: torch.Tensor) -> int:
    """Transformer tokens per sample of a latent (B, C, T, H, W) at patch (1, 2, 2)."""
    return x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return {
        "latents": [torch.randn(BATCH, *shape, generator=g) for shape in STAGE_SHAPES],
        "prompt_embeds": torch.randn(BATCH, 8, 32, generator=g),
    }


def objective_with_stubs(*overrides):
    objective = build_objective(load_config(None, ["model.init=toy-wan", *overrides]))
    student = Recorder()
    objective.use({"generator": student})
    reference = None
    if getattr(objective, "reference", None) is not None:
        reference = objective.reference = Recorder()
    return objective, student, reference


def test_pyramidal_calls_the_model_once_per_stage_with_that_stages_tokens(batch):
    objective, student, reference = objective_with_stubs("objective.name=pyramidal")
    objective.generator_loss(batch, torch.Generator().manual_seed(1))
    assert [tuple(c["x"].shape) for c in student.calls] == [(2, *shape) for shape in STAGE_SHAPES]
    assert [tokens(c["x"]) for c in student.calls] == STAGE_TOKENS
    for stage, call in enumerate(student.calls):
        seg = objective.pyramid.segments[stage]
        assert call["sigma"].shape == (2,)
        assert ((call["sigma"] >= seg.sigma_c) & (call["sigma"] <= seg.sigma_n)).all()
        assert torch.equal(call["embeds"], batch["prompt_embeds"][2 * stage : 2 * stage + 2])
    # L_dist: the frozen original sees exactly the student's inputs, at the stages with a weight (not S-1).
    assert len(reference.calls) == 2
    for ref, call in zip(reference.calls, student.calls):
        assert torch.equal(ref["x"], call["x"]) and torch.equal(ref["sigma"], call["sigma"])


def test_pyramidal_loss_is_l_pyr_of_the_same_draws(batch):
    objective, student, reference = objective_with_stubs(
        "objective.name=pyramidal", "objective.dist_weight=0"
    )
    assert reference is None
    loss, logs = objective.generator_loss(batch, torch.Generator().manual_seed(1))
    assert len(student.calls) == 3

    # Replay METHOD.md 4.7 with the same generator: per stage eps, then rho; u = R_up x0^(i+1).
    g, pyramid, expected = torch.Generator().manual_seed(1), objective.pyramid, []
    for stage in range(3):
        rows = slice(2 * stage, 2 * stage + 2)
        x0 = batch["latents"][stage][rows]
        noise = torch.randn(x0.shape, generator=g)
        rho = torch.rand(2, generator=g)
        u = pyramid.up(batch["latents"][stage + 1][rows], stage) if stage < 2 else None
        x, sigma, target = pyramid.training_point(x0, u, noise, stage, rho)
        torch.testing.assert_close(student.calls[stage]["x"], x, rtol=0, atol=0)
        torch.testing.assert_close(student.calls[stage]["sigma"], sigma, rtol=0, atol=0)
        expected.append(F.mse_loss(x, target))  # the stub's prediction is x itself
        torch.testing.assert_close(logs[f"loss_pyr/stage{stage}"], expected[-1])
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(("name", "stages"), [("flow-matching", [0]), ("multires-fm", [0, 1, 2])])
def test_plain_flow_matching_calls_per_trained_stage(batch, name, stages):
    objective, student, reference = objective_with_stubs(f"objective.name={name}")
    objective.generator_loss(batch, torch.Generator().manual_seed(1))
    per = BATCH // len(stages)
    assert [tuple(c["x"].shape) for c in student.calls] == [(per, *STAGE_SHAPES[s]) for s in stages]
    assert reference is None
