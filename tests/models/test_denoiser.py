"""Denoiser wrappers: the 1000x timestep boundary, dtype casts, and batched classifier-free guidance."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from torch import nn

from pyramidal_wan.models.denoiser import CFGVelocity, WanVelocity
from pyramidal_wan.models.presets import get_transformer_config


class RecordingTransformer(nn.Module):
    """Stands in for WanTransformer3DModel: records its inputs, returns a known function of them."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.ones((), dtype=dtype))
        self.calls = []

    @property
    def dtype(self):
        return self.weight.dtype

    def forward(
        self, hidden_states, timestep, encoder_hidden_states, attention_kwargs=None, return_dict=True
    ):
        self.calls.append(
            {
                "x": hidden_states,
                "timestep": timestep,
                "text": encoder_hidden_states,
                "attention_kwargs": attention_kwargs,
            }
        )
        # velocity = x * t / 1000 + mean of the text, per sample: distinguishes sigma and text per sample.
        text = encoder_hidden_states.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)
        out = hidden_states * timestep.reshape(-1, 1, 1, 1, 1).to(hidden_states.dtype) / 1000 + text
        return (out * self.weight,)


@pytest.fixture(scope="module")
def tiny_transformer():
    torch.manual_seed(0)
    return WanTransformer3DModel.from_config({**get_transformer_config("toy-wan"), "num_layers": 1}).eval()


def inputs(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 2, 4, 4, generator=generator)  # (B, C, T, H, W)
    text = torch.randn(batch, 6, 32, generator=generator)  # (B, N_txt, text_dim)
    negative = torch.randn(batch, 6, 32, generator=generator)
    return x, text, negative


def test_velocity_scales_sigma_to_timestep_once():
    model = WanVelocity(RecordingTransformer())
    x, text, _ = inputs()
    model(x, 0.25, text, attention_kwargs={"scale": 0.5})
    model(x, torch.tensor([0.1, 0.9]), text)
    first, second = model.transformer.calls
    assert first["timestep"].tolist() == [250.0, 250.0] and first["timestep"].dtype == torch.float32
    assert first["attention_kwargs"] == {"scale": 0.5}
    torch.testing.assert_close(second["timestep"], torch.tensor([100.0, 900.0]))
    with pytest.raises(ValueError, match="scalar or a"):
        model(x, torch.tensor([0.1, 0.2, 0.3]), text)


def test_velocity_casts_to_the_transformer_dtype_and_back():
    model = WanVelocity(RecordingTransformer(dtype=torch.bfloat16))
    x, text, _ = inputs()
    out = model(x, 0.5, text)
    call = model.transformer.calls[0]
    assert call["x"].dtype == call["text"].dtype == torch.bfloat16
    assert out.dtype == torch.float32 and out.shape == x.shape


def test_velocity_runs_the_real_transformer(tiny_transformer):
    x, text, _ = inputs()
    out = WanVelocity(tiny_transformer)(x, torch.tensor([0.3, 0.7]), text)
    expected = tiny_transformer(x, torch.tensor([300.0, 700.0]), text, return_dict=False)[0]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_cfg_is_one_batched_call_in_the_standard_form(tiny_transformer):
    velocity = WanVelocity(tiny_transformer)
    x, text, negative = inputs()
    sigma = torch.tensor([0.2, 0.8])  # different noise levels per sample
    calls = []
    handle = tiny_transformer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        guided = CFGVelocity(velocity, 5.0)(x, sigma, text, negative)
        cond = velocity(x, sigma, text)
        uncond = velocity(x, sigma, negative)
    finally:
        handle.remove()
    assert calls == [4, 2, 2]  # one batched call of 2B, then the two reference calls
    torch.testing.assert_close(guided, uncond + 5.0 * (cond - uncond), atol=1e-5, rtol=0)


def test_cfg_scale_one_is_a_single_conditional_call():
    inner = WanVelocity(RecordingTransformer())
    x, text, negative = inputs()
    out = CFGVelocity(inner, 1.0)(x, 0.5, text, negative)
    assert len(inner.transformer.calls) == 1 and inner.transformer.calls[0]["x"].shape[0] == 2
    torch.testing.assert_close(out, inner(x, 0.5, text))
    # Without guidance no negative text is needed.
    CFGVelocity(inner, 1.0)(x, 0.5, text)


def test_cfg_accepts_one_scale_per_sample():
    inner = WanVelocity(RecordingTransformer())
    x, text, negative = inputs()
    scales = torch.tensor([1.0, 4.0])
    guided = CFGVelocity(inner, scales)(x, torch.tensor([0.3, 0.6]), text, negative)
    for i, w in enumerate(scales.tolist()):
        single = CFGVelocity(inner, w)(
            x[i : i + 1], torch.tensor([0.3, 0.6])[i : i + 1], text[i : i + 1], negative[i : i + 1]
        )
        torch.testing.assert_close(guided[i : i + 1], single)


def test_cfg_needs_matching_negative_text():
    inner = WanVelocity(RecordingTransformer())
    x, text, negative = inputs()
    with pytest.raises(ValueError, match="negative_encoder_hidden_states"):
        CFGVelocity(inner, 3.0)(x, 0.5, text)
    with pytest.raises(ValueError, match="shape"):
        CFGVelocity(inner, 3.0)(x, 0.5, text, negative[:, :4])
