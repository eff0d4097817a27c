"""Latency mechanics on a tiny CPU transformer (no wall-clock assertions)."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.latency import (
    cast_like_from_pretrained,
    forward_latency_ms,
    percentile,
    summarize_ms,
    time_calls_ms,
)
from pyramidal_wan.models.presets import get_transformer_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return WanTransformer3DModel.from_config({**get_transformer_config("toy-wan"), "num_layers": 1}).eval()


def test_percentiles_interpolate():
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 0.5) == pytest.approx(5.5)
    assert percentile(values, 0.1) == pytest.approx(1.9)
    assert percentile(values, 0.9) == pytest.approx(9.1)
    assert percentile([3.0], 0.9) == 3.0
    summary = summarize_ms([5.0, 1.0, 3.0])
    assert summary == {"median": 3.0, "p10": pytest.approx(1.4), "p90": pytest.approx(4.6), "repeats": 3}


def test_time_calls_counts_warmup_and_repeats():
    calls = []
    times = time_calls_ms(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=4)
    assert len(calls) == 6 and len(times) == 4 and all(t >= 0 for t in times)


def test_forward_latency_runs_the_transformer(tiny):
    shapes = []
    handle = tiny.register_forward_hook(lambda module, args, out: shapes.append(tuple(out[0].shape)))
    try:
        result = forward_latency_ms(
            tiny, (16, 2, 8, 8), text_len=8, warmup=1, repeats=3, generator=torch.Generator().manual_seed(0)
        )
    finally:
        handle.remove()
    assert shapes == [(1, 16, 2, 8, 8)] * 4  # 1 warm-up + 3 timed forwards, output shaped like the latent
    assert result["repeats"] == 3
    assert 0 < result["p10"] <= result["median"] <= result["p90"]


@pytest.mark.parametrize("kwargs", [{"latent_shape": (4, 2, 8, 8)}, {"repeats": 0}, {"warmup": -1}])
def test_bad_arguments_raise(tiny, kwargs):
    args = {"latent_shape": (16, 2, 8, 8), "text_len": 4, "warmup": 0, "repeats": 1, **kwargs}
    with pytest.raises(InputError):
        forward_latency_ms(tiny, **args)


def test_cast_like_from_pretrained_keeps_fp32_modules(tmp_path, tiny):
    # Reference: what diffusers itself does when loading with torch_dtype=bfloat16.
    tiny.save_pretrained(tmp_path)
    loaded = WanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    torch.manual_seed(0)
    cast = cast_like_from_pretrained(
        WanTransformer3DModel.from_config({**get_transformer_config("toy-wan"), "num_layers": 1}),
        torch.bfloat16,
    )
    expected = {name: p.dtype for name, p in loaded.named_parameters()}
    assert {name: p.dtype for name, p in cast.named_parameters()} == expected
    assert {torch.float32, torch.bfloat16} == set(expected.values())
