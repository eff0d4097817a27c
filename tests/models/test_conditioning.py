"""Image conditions through the velocity wrappers: batched CFG (accelerators) and a two-expert batch split
give the same velocities as per-sample calls."""

import torch
from diffusers import WanTransformer3DModel
from helpers import TINY_I2V_TRANSFORMER

from pyramidal_wan.models.conditioning import ImageCondition, with_first_frame_mask
from pyramidal_wan.models.denoiser import CFGVelocity, WanVelocity
from pyramidal_wan.models.wan_family import ExpertVelocity


def tiny_i2v(seed: int) -> WanVelocity:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanVelocity(
            WanTransformer3DModel.from_config({**TINY_I2V_TRANSFORMER, "num_layers": 1}).eval()
        )


def inputs(batch: int = 2):
    """Latents, text, negative text and a per-sample condition of two stage sizes (B rows each)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 16, 2, 4, 4, generator=generator)  # (B, C, T, H, W)
    text, negative = torch.randn(2, batch, 6, 32, generator=generator)
    latents = {
        size: with_first_frame_mask(torch.randn(batch, 16, *size, generator=generator), 4)
        for size in ((2, 4, 4), (1, 2, 2))
    }
    embeds = torch.randn(batch, 17, 32, generator=generator)
    return x, text, negative, ImageCondition("clip", latents, embeds)


def test_batched_cfg_repeats_the_image_condition_for_both_branches():
    x, text, negative, condition = inputs()
    velocity = tiny_i2v(0)
    with torch.no_grad():
        batched = CFGVelocity(velocity, 4.0, batched=True)(x, 0.6, text, negative, image_condition=condition)
        apart = CFGVelocity(velocity, 4.0, batched=False)(x, 0.6, text, negative, image_condition=condition)
    torch.testing.assert_close(batched, apart, atol=1e-5, rtol=1e-5)


def test_a_two_expert_split_takes_each_samples_condition():
    x, text, _, condition = inputs()
    high, low = tiny_i2v(0), tiny_i2v(1)
    sigma = torch.tensor([0.95, 0.3])  # one sample on each side of the 0.9 boundary
    with torch.no_grad():
        split = ExpertVelocity(high, low, 0.9)(x, sigma, text, image_condition=condition)
        for row, expert in ((0, high), (1, low)):
            one = ImageCondition(
                "clip",
                {size: value[row : row + 1] for size, value in condition.latents.items()},
                condition.image_embeds[row : row + 1],
            )
            alone = expert(x[row : row + 1], sigma[row : row + 1], text[row : row + 1], image_condition=one)
            torch.testing.assert_close(split[row : row + 1], alone, atol=1e-5, rtol=1e-5)


def test_first_frame_rows_take_the_clean_latent_at_timestep_zero_and_the_others_stay_text_to_video():
    """A clean-first-frame condition with `image_rows`: those rows get the clean latent on frame 0 and
    timestep 0 on its tokens, the others keep their latents and one timestep for every token; CFG's doubled
    batch repeats the rows and a subset keeps its own."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 3, 4, 4, generator=generator)  # (B, C, T, H, W)
    clean = torch.randn(3, 4, 1, 4, 4, generator=generator)
    rows = torch.tensor([True, False, True])
    condition = ImageCondition("first_frame", {(3, 4, 4): clean}, image_rows=rows)
    timestep = torch.tensor([500.0, 600.0, 700.0])
    hidden, per_token, embeds = condition.model_inputs(x, timestep, (1, 2, 2))
    first = 4  # tokens of latent frame 0: (4 / 2) x (4 / 2)
    assert embeds is None and per_token.shape == (3, 3 * first)
    assert (per_token[rows, :first] == 0).all()
    assert torch.equal(per_token[rows, first:], timestep[rows, None].expand(2, 2 * first))
    assert torch.equal(per_token[1], torch.full((3 * first,), 600.0))
    assert torch.equal(hidden[rows, :, :1], clean[rows]) and torch.equal(hidden[1], x[1])
    assert torch.equal(hidden[:, :, 1:], x[:, :, 1:])
    assert torch.equal(condition.with_clean_first_frame(x), hidden)
    doubled = condition.model_inputs(torch.cat([x, x]), timestep.repeat(2), (1, 2, 2))
    assert torch.equal(doubled[0], torch.cat([hidden, hidden]))
    assert torch.equal(doubled[1], torch.cat([per_token, per_token]))
    subset = condition.rows(torch.tensor([False, True, True]))
    picked = subset.model_inputs(x[1:], timestep[1:], (1, 2, 2))
    assert torch.equal(picked[0], hidden[1:]) and torch.equal(picked[1], per_token[1:])
    every = ImageCondition("first_frame", {(3, 4, 4): clean})  # the pipeline's: every row
    assert (every.model_inputs(x, timestep, (1, 2, 2))[1][:, :first] == 0).all()
