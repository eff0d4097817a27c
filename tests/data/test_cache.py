import json

import numpy as np
import pytest
import torch

from pyramidal_wan.data.cache import (
    MANIFEST,
    CachedLatents,
    CacheSettings,
    derive_latent_cache,
    fit_video,
    prepare_data,
)
from pyramidal_wan.data.stages import downsample_video, stage_videos
from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.pyramid import Pyramid
from pyramidal_wan.toy.dataset import clip_name, make_dataset
from pyramidal_wan.toy.text import build_text_encoder, build_tokenizer
from pyramidal_wan.toy.vae import build_vae


def test_pixel_pyramid_keeps_frame_zero_and_averages_pairs():
    video = torch.randn(1, 3, 9, 8, 8, generator=torch.Generator().manual_seed(0))
    low = downsample_video(video, (2, 2, 2))
    assert low.shape == (1, 3, 5, 4, 4)
    torch.testing.assert_close(low[:, :, 0], torch.nn.functional.avg_pool2d(video[:, :, 0], 2))
    pair = (video[:, :, 1] + video[:, :, 2]) / 2
    torch.testing.assert_close(low[:, :, 1], torch.nn.functional.avg_pool2d(pair, 2))
    sub = downsample_video(video, (2, 2, 2), "subsample")
    torch.testing.assert_close(sub[:, :, 1], torch.nn.functional.avg_pool2d(video[:, :, 2], 2))
    assert [v.shape[2:] for v in stage_videos(video, [(2, 2, 2), (2, 2, 2)])] == [
        (9, 8, 8),
        (5, 4, 4),
        (3, 2, 2),
    ]


def test_pixel_and_latent_pyramids_agree_for_a_linear_encoder():
    """Box filters in pixel space commute with a per-pixel linear map: same stages either way (Haar)."""
    video = torch.randn(1, 3, 9, 8, 8, generator=torch.Generator().manual_seed(1))
    p = Pyramid.build(2, factors=[(2, 2, 2)])
    mix = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    encode = lambda v: torch.einsum("oc,bcfhw->bofhw", mix, v)  # noqa: E731
    # Frame-wise encoder: latent frame j = pixel frame j; pixel pairs (1,2),(3,4) = latent pairs.
    torch.testing.assert_close(encode(downsample_video(video, (2, 2, 2))), p.down(encode(video), 0))


def test_fit_video_crops_and_checks_length():
    frames = np.zeros((10, 40, 60, 3), dtype=np.uint8)
    frames[:, :, 25:35] = 255  # a bright centre stripe survives the centre crop
    out = fit_video(frames, 9, 16, 16)
    assert out.shape == (3, 9, 16, 16) and out.max() == 1.0
    with pytest.raises(InputError, match="fewer than the 17 needed"):
        fit_video(frames, 17, 16, 16)


def test_prepare_data_resumes_and_reports_corrupt_videos(tmp_path):
    make_dataset(tmp_path / "data", n=5, progress=False)
    (tmp_path / "data" / clip_name(3)).write_bytes(b"not a video")
    args = (build_vae(0), build_tokenizer(), build_text_encoder(0), CacheSettings(17, 64, 64))
    manifest = prepare_data(
        tmp_path / "data", tmp_path / "cache", *args, shard_size=2, limit=3, progress=False
    )
    assert [s["count"] for s in manifest["shards"]] == [2, 1]
    manifest = prepare_data(tmp_path / "data", tmp_path / "cache", *args, shard_size=2, progress=False)
    assert [s["count"] for s in manifest["shards"]] == [2, 1, 1]  # resumed after video 3; one skipped
    assert [s["video"] for s in manifest["skipped"]] == [clip_name(3)]
    assert json.loads((tmp_path / "cache" / MANIFEST).read_text()) == manifest
    data = CachedLatents(tmp_path / "cache")
    assert len(data) == 4
    assert [tuple(x.shape) for x in data[0]["latents"]] == [(16, 5, 16, 16), (16, 3, 8, 8), (16, 2, 4, 4)]
    with pytest.raises(InputError, match="prepared with other settings"):
        prepare_data(
            tmp_path / "data", tmp_path / "cache", *args[:3], CacheSettings(17, 64, 64, 2), progress=False
        )


def test_derived_latent_cache_downsamples_stage_zero(tiny_cache, tmp_path):
    pixel = CachedLatents(tiny_cache)
    manifest = derive_latent_cache(tiny_cache, tmp_path / "latent")
    assert manifest["settings"]["construction"] == "latent"
    latent = CachedLatents(tmp_path / "latent")
    torch.testing.assert_close(latent.latents[0], pixel.latents[0], rtol=0, atol=0)
    torch.testing.assert_close(latent.prompt_embeds, pixel.prompt_embeds, rtol=0, atol=0)
    pyramid = Pyramid.build(3)
    for stage in (1, 2):
        expected = pyramid.down_to(pixel.latents[0].float(), stage).half()
        torch.testing.assert_close(latent.latents[stage], expected, rtol=0, atol=0)
        assert not torch.allclose(latent.latents[stage].float(), pixel.latents[stage].float(), atol=1e-2)
    assert derive_latent_cache(tiny_cache, tmp_path / "latent") == manifest  # idempotent
    with pytest.raises(InputError, match="pass a pixel cache"):
        derive_latent_cache(tmp_path / "latent", tmp_path / "again")
    with pytest.raises(CheckpointError, match="run `pyramidal-wan prepare-data` first"):
        derive_latent_cache(tmp_path / "missing", tmp_path / "again")


def test_prepare_data_cli_derives_and_checks_its_flags(tiny_cache, tmp_path, capsys):
    from pyramidal_wan.cli import main

    out = tmp_path / "latent"
    assert main(["prepare-data", "--from-cache", str(tiny_cache), "--out", str(out)]) == 2
    assert "add --construction latent" in capsys.readouterr().err
    argv = ["prepare-data", "--from-cache", str(tiny_cache), "--construction", "latent", "--out", str(out)]
    assert main(argv) == 0
    assert f"derived 6 videos' latent-space stages from {tiny_cache}" in capsys.readouterr().out
    assert main(["prepare-data", "--out", str(tmp_path / "x"), "--height", "64"]) == 2
    assert "needs --data, --model, --num-frames, --width" in capsys.readouterr().err


def test_prepare_data_checks_the_whole_listing_before_any_work(tmp_path, capsys):
    from pyramidal_wan.cli import main

    make_dataset(tmp_path / "data", n=2, progress=False)
    captions = tmp_path / "data" / "captions.jsonl"
    lines = captions.read_text().splitlines()
    bad = [
        *lines,
        json.dumps({"video": None, "caption": "x"}),
        json.dumps({"video": clip_name(0), "caption": 3}),
    ]
    captions.write_text("\n".join(bad) + "\n")
    out = tmp_path / "cache"
    argv = ["prepare-data", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "no-model"), "--out"]
    argv += [str(out), "--num-frames", "17", "--height", "64", "--width", "64"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2 bad line(s)" in err and "line 3 has 'video': null" in err and "line 4 has 'caption': 3" in err
    assert not out.exists()  # nothing half-made
    captions.write_text("")
    assert main(argv) == 2 and "lists no videos" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--limit", "0"]) == 2
    assert "argument --limit: 0 must be at least 1" in capsys.readouterr().err
