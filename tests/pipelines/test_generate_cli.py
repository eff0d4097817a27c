"""`pyramidal-wan generate` on a tiny saved model: files written, what is printed, one-line errors."""

import numpy as np
import pytest
from pipeline_helpers import PROMPT, build_pipeline, build_ppf_pipeline

from pyramidal_wan.cli import main
from pyramidal_wan.models import bundled
from pyramidal_wan.pipelines import export_video, to_uint8_video
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.utils.video import read_video


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    build_pipeline(PyramidConfig(sampler="fewstep", default_schedule="2-2-1")).save_pretrained(folder)
    return folder


def test_generate_writes_mp4_and_gif_and_reports_them(model_dir, tmp_path, capsys):
    out = tmp_path / "clips" / "video.mp4"
    code = main(["generate", PROMPT, "--model", str(model_dir), "--out", str(out), "--gif", "--threads", "1"])
    assert code == 0
    frames = read_video(out)
    assert frames.shape == (17, 64, 64, 3)
    assert read_video(out.with_suffix(".gif")).shape[1:] == (64, 64, 3)
    printed = capsys.readouterr().out
    assert f"wrote {out} and {out.with_suffix('.gif')}" in printed
    assert "17 frames of 64x64 at 16 fps, schedule 2-2-1 (fewstep, no CFG), seed 0" in printed
    assert "TFLOPs in 5 transformer forwards" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["video.gif", "video.mp4"]  # no temporary files


def test_generate_follows_the_seed_and_overrides(model_dir, tmp_path, capsys):
    def generate(name, *extra):
        path = tmp_path / name
        args = ["generate", PROMPT, "--model", str(model_dir), "--out", str(path), "--threads", "1", *extra]
        assert main(args) == 0
        return read_video(path)

    a = generate("a.mp4", "--seed", "3")
    b = generate("b.mp4", "--seed", "3")
    c = generate("c.mp4", "--seed", "4")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    d = generate("d.mp4", "--schedule", "3-2-2", "--sampler", "multistep", "--guidance-scale", "3")
    assert "17 frames of 64x64 at 16 fps, schedule 3-2-2 (multistep, CFG 3)" in capsys.readouterr().out
    generate(
        "f.mp4", "--schedule", "4-4-4", "--sampler", "multistep", "--solver", "dpm2m", "--cache", "taylorseer"
    )
    assert "schedule 4-4-4 (multistep dpm2m, CFG 5)" in capsys.readouterr().out
    # Plain Wan sampling needs only full-resolution geometry: 9x48x64 is fine there.
    e = generate(
        "e.mp4", "--schedule", "0-0-2", "--num-frames", "9", "--height", "48", "--negative-prompt", "a"
    )
    assert "9 frames of 48x64 at 16 fps, schedule 0-0-2 (fewstep, no CFG)" in capsys.readouterr().out
    assert d.shape == (17, 64, 64, 3) and e.shape == (9, 48, 64, 3)


@pytest.fixture(scope="module")
def ppf_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ppf")
    build_ppf_pipeline(default_schedule="2-2-1").save_pretrained(folder)
    return folder


def test_generate_takes_one_guidance_scale_per_ppf_stage(ppf_model_dir, tmp_path, capsys):
    def generate(name, scale):
        path = tmp_path / name
        args = ["generate", PROMPT, "--model", str(ppf_model_dir), "--out", str(path), "--threads", "1"]
        assert main([*args, "--guidance-scale", scale]) == 0
        return read_video(path), capsys.readouterr().out

    per_stage, printed = generate("a.mp4", "3,4,5")
    assert "schedule 2-2-1 (multistep, CFG 3/4/5 (lowest resolution first))" in printed
    assert "TFLOPs in 10 transformer forwards" in printed  # every stage guided: cond + uncond
    same, printed = generate("b.mp4", "3,3,3")
    single, _ = generate("c.mp4", "3")
    assert "CFG 3/3/3" in printed and np.array_equal(same, single)  # equal scales = one scale
    assert not np.array_equal(per_stage, single)
    _, printed = generate("d.mp4", "5,3,1")
    assert "TFLOPs in 9 transformer forwards" in printed  # stage 0 (1 step) runs w = 1 unguided


@pytest.mark.parametrize(
    ("model", "scale", "message"),
    [
        ("resolution", "3,4,5", "one guidance scale per stage needs a patch-pyramid (PPF) model"),
        ("ppf", "3,4", "must be 3 values >= 1, lowest resolution first"),
        ("ppf", "3,x,5", "must be a finite number, or one number per stage like 3,4,5"),
    ],
)
def test_bad_per_stage_guidance_is_a_one_line_error(
    model_dir, ppf_model_dir, tmp_path, capsys, model, scale, message
):
    folder = ppf_model_dir if model == "ppf" else model_dir
    out = tmp_path / "video.mp4"
    assert (
        main(["generate", PROMPT, "--model", str(folder), "--out", str(out), "--guidance-scale", scale]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-frames", "16"], "num_frames 16 must be 4k+1"),
        (["--height", "48"], "height 48 must be divisible by 32"),
        (["--schedule", "2-1"], "2 entries but the model has 3 stages"),
        (["--sampler", "ddim"], "unknown sampler"),
        (["--solver", "heun", "--sampler", "multistep"], "unknown solver"),
        (["--solver", "dpm2m"], "applies to multistep sampling"),
        (["--cache", "first-block"], "needs multistep sampling"),
        (["--cache", "teacache", "--sampler", "multistep"], "unknown cache"),
        (["--guidance-scale", "0.5"], "guidance_scale"),
        (["--out", "{tmp}/video.avi"], "must end in .mp4"),
        (["--dtype", "float8"], "unknown dtype"),
        (["--device", "tpu"], "device"),
        (["--fps", "0"], "argument --fps: 0 must be positive"),
        (["--fps", "nan"], "argument --fps: nan is not a finite number"),
        (["--fps", "inf"], "argument --fps: inf is not a finite number"),
        (["--guidance-scale", "nan"], "must be a finite number"),
        (["--guidance-scale", "3,inf,5"], "must be a finite number"),
        (["--threads", "0"], "argument --threads: 0 must be at least 1"),
        (["--height", "-64"], "argument --height: -64 must be at least 1"),
        (["--num-frames", "many"], "argument --num-frames: 'many' is not an integer"),
        (["--schedule", "1-1-99999999999999999999"], "more than 1000 steps in a stage"),
        (
            ["--schedule", "0-0-2", "--height", "1048576", "--width", "1048576"],
            "GiB for its pixels and latent",
        ),
        (["--model", "{tmp}/no-such-model"], "not found"),
        (["--decoder", "{tmp}"], "is not a tiny-decoder folder (no config.json)"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_no_output(model_dir, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    if "--model" not in args:
        args += ["--model", str(model_dir)]
    out = tmp_path / "video.mp4"
    code = main(
        ["generate", PROMPT, "--out", str(out), *args] if "--out" not in args else ["generate", PROMPT, *args]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no partial output file


def test_missing_bundled_model_says_how_to_make_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bundled, "REPO_ROOT", tmp_path)
    assert main(["generate", PROMPT, "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no bundled model exists yet (not even" in err and "models/toy/base" in err
    assert "pyramidal-wan toy" in err and "--model" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "v.mp4").exists()


def test_bundled_model_is_the_best_existing_member(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "REPO_ROOT", tmp_path)
    for member in reversed(bundled.BUNDLED_MODELS):  # each better member takes over once it exists
        (tmp_path / member).mkdir(parents=True)
        (tmp_path / member / "model_index.json").write_text("{}")
        assert bundled.bundled_model_path() == tmp_path / member


def test_export_converts_pipeline_frames(tmp_path):
    frames = np.linspace(0.0, 1.0, 5 * 8 * 8 * 3, dtype=np.float32).reshape(5, 8, 8, 3)
    pixels = to_uint8_video(frames)
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255
    written = export_video(frames, tmp_path / "v.mp4", fps=8, gif=True)
    assert written == [tmp_path / "v.mp4", tmp_path / "v.gif"]
    assert np.abs(read_video(written[0]).astype(int) - pixels).max() <= 2  # lossless H.264 up to YUV rounding


def test_output_paths_are_checked_before_sampling(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        "pyramidal_wan.cli.generate.PyramidalWanPipeline.from_pretrained",
        lambda *a, **k: pytest.fail("the model was loaded before the output paths were checked"),
    )
    (tmp_path / "taken.mp4").mkdir()
    (tmp_path / "clip.gif").mkdir()
    (tmp_path / "file").write_text("not a folder")
    for out, gif, message in (
        ("taken.mp4", [], "taken.mp4 is an existing folder"),
        ("clip.mp4", ["--gif"], "clip.gif is an existing folder"),
        ("file/video.mp4", [], "file is a file, not a folder"),
    ):
        argv = ["generate", PROMPT, "--model", str(model_dir), "--out", str(tmp_path / out), *gif]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "file", "taken.mp4"]


def test_mp4_and_gif_appear_together_or_not_at_all(tmp_path, monkeypatch):
    from pyramidal_wan.pipelines import export

    frames = np.zeros((5, 8, 8, 3), np.float32)
    write = export.write_video

    def gif_fails(path, pixels, fps):
        if path.suffix == ".gif":
            raise OSError("disk full")
        return write(path, pixels, fps=fps)

    monkeypatch.setattr(export, "write_video", gif_fails)
    with pytest.raises(OSError, match="disk full"):
        export_video(frames, tmp_path / "v.mp4", gif=True)
    assert list(tmp_path.iterdir()) == []  # the MP4, written first, was not left behind


def test_generate_decodes_with_a_tiny_decoder(model_dir, tmp_path, capsys):
    from pyramidal_wan.models.tiny_decoder import TinyWanDecoder

    TinyWanDecoder().save_pretrained(tmp_path / "decoder")
    out = tmp_path / "video.mp4"
    args = ["generate", PROMPT, "--model", str(model_dir), "--out", str(out), "--threads", "1"]
    assert main([*args, "--decoder", str(tmp_path / "decoder")]) == 0
    tiny = read_video(out)
    assert tiny.shape == (17, 64, 64, 3)
    assert main(args) == 0
    assert not np.array_equal(read_video(out), tiny)  # the VAE's decoder made the other one
