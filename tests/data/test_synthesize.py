"""`pyramidal-wan synthesize-data` with a tiny plain teacher: the dataset prepare-data reads, resume,
interruption, per-video seeds, one-line errors, and (slow) two processes writing what one writes."""

import json

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from helpers import needs_torchrun, run_cli_in_two_cpu_processes

from pyramidal_wan.cli import main
from pyramidal_wan.data import synthesize as synth
from pyramidal_wan.data.cache import CachedLatents
from pyramidal_wan.data.dataset import read_records
from pyramidal_wan.errors import InputError
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.toy.family import assemble_toy_pipeline
from pyramidal_wan.utils.video import read_video

PROMPTS = ["a red circle moving left", "a green square moving up", "a blue triangle moving right"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A plain (non-pyramidal) toy-size teacher folder with a 2-layer transformer; 17x64x64 by default."""
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**{**get_transformer_config("toy-wan"), "num_layers": 2})
    return assemble_toy_pipeline(tmp_path_factory.mktemp("teacher") / "model", transformer=transformer)


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:2]) + "\n\n")  # a trailing blank line is skipped
    return path


def synthesize_args(teacher, prompts, out, *extra):
    return [
        "synthesize-data",
        "--teacher",
        str(teacher),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--schedule",
        "0-0-2",
        "--videos-per-prompt",
        "2",
        "--seed",
        "5",
        *extra,
    ]


def folder_contents(folder):
    """Every file of a folder by name (bytes), hidden temporaries included."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_synthesize_writes_a_dataset_that_prepare_data_caches(teacher, prompts_file, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(synthesize_args(teacher, prompts_file, out)) == 0
    printed = capsys.readouterr().out
    assert f"4 videos in {out}: 4 written, 0 already on disk (skipped)" in printed
    records = read_records(out)
    assert [r["video"] for r in records] == [
        "000000-00.mp4",
        "000000-01.mp4",
        "000001-00.mp4",
        "000001-01.mp4",
    ]
    assert [r["caption"] for r in records] == [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    assert [r["seed"] for r in records] == [synth.video_seed(5, p, v) for p in (0, 1) for v in (0, 1)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [r["video"] for r in records] + ["captions.jsonl", "synthesis.json"]
    )  # no caption parts or temporary files left
    manifest = json.loads((out / "synthesis.json").read_text())
    assert manifest["settings"]["schedule"] == "0-0-2" and manifest["settings"]["guidance_scale"] == 5.0
    assert (manifest["settings"]["num_frames"], manifest["settings"]["height"]) == (17, 64)
    videos = [read_video(out / r["video"]) for r in records]
    assert all(v.shape == (17, 64, 64, 3) for v in videos)
    assert not np.array_equal(videos[0], videos[1])  # two videos of one prompt differ (their seeds do)

    # Video v of prompt p is the teacher's sample from video_seed(seed, p, v), alone.
    pipe = PyramidalWanPipeline.from_pretrained(teacher)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        PROMPTS[1], schedule="0-0-2", generator=torch.Generator().manual_seed(records[3]["seed"])
    ).frames[0]
    expected = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(videos[3].astype(int) - expected).max() <= 2  # lossless H.264 up to YUV rounding

    cache = tmp_path / "cache"
    args = ["prepare-data", "--data", str(out), "--model", str(teacher), "--out", str(cache)]
    assert main([*args, "--num-frames", "17", "--height", "64", "--width", "64"]) == 0
    assert "cached 4 videos" in capsys.readouterr().out
    assert len(CachedLatents(cache)) == 4


def test_rerun_skips_finished_videos_and_makes_only_missing_ones(
    teacher, prompts_file, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "data"
    assert main(synthesize_args(teacher, prompts_file, out)) == 0
    first = folder_contents(out)
    capsys.readouterr()

    def no_loading(*args, **kwargs):
        raise AssertionError("the teacher must not load when every video exists")

    with monkeypatch.context() as patch:
        patch.setattr(PyramidalWanPipeline, "from_pretrained", no_loading)
        assert main(synthesize_args(teacher, prompts_file, out)) == 0
    assert (
        "4 written" not in (printed := capsys.readouterr().out) and "0 written, 4 already on disk" in printed
    )
    assert folder_contents(out) == first

    (out / "000001-00.mp4").unlink()
    assert main(synthesize_args(teacher, prompts_file, out)) == 0
    assert "1 written, 3 already on disk" in capsys.readouterr().out
    assert folder_contents(out) == first  # the remade video is byte-identical


def test_an_interrupted_run_resumes_to_the_same_output(teacher, prompts_file, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert main(synthesize_args(teacher, prompts_file, straight)) == 0

    calls = {"n": 0}
    original = synth.write_video

    def dies_on_the_third_video(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(synth, "write_video", dies_on_the_third_video)
        assert main(synthesize_args(teacher, prompts_file, interrupted)) == 130
    assert sorted(p.name for p in interrupted.iterdir()) == [
        "000000-00.mp4",
        "000000-01.mp4",
        "synthesis.json",
    ]
    assert main(synthesize_args(teacher, prompts_file, interrupted)) == 0
    assert folder_contents(interrupted) == folder_contents(straight)


def test_video_seeds_are_repeatable_and_distinct():
    assert synth.video_seed(0, 1, 2) == synth.video_seed(0, 1, 2)
    seeds = {synth.video_seed(s, p, v) for s in range(3) for p in range(3) for v in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)


def test_jsonl_prompts_take_caption_or_prompt(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [{"caption": " a cat "}, {"prompt": "a dog"}, {"video": "x.mp4", "caption": "a cow"}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert synth.read_prompts(path) == ["a cat", "a dog", "a cow"]
    path.write_text('{"text": "a cat"}\n')
    with pytest.raises(InputError, match=r"prompts.jsonl:1 needs a non-empty string 'caption'"):
        synth.read_prompts(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"teacher": "{tmp}/no-such-model"}, "is not a folder; give a diffusers Wan pipeline folder"),
        ({"prompts": "{tmp}/none.txt"}, "prompts file {tmp}/none.txt does not exist"),
        ({"prompts": "{tmp}/empty.txt"}, "holds no prompts"),
        ({"extra": ["--num-frames", "16"]}, "num_frames 16 must be 4k+1"),
        ({"extra": ["--height", "36"]}, "height 36"),
        ({"extra": ["--height", "0"]}, "argument --height: 0 must be at least 1"),
        ({"extra": ["--videos-per-prompt", "0"]}, "argument --videos-per-prompt: 0 must be at least 1"),
        ({"extra": ["--schedule", "2-1"]}, "2 entries but the model has 3 stages"),
        ({"extra": ["--guidance-scale", "0.5"]}, "guidance_scale 0.5 must be >= 1"),
        ({"extra": ["--crf", "60"]}, "--crf must be in 0..51"),
        ({"extra": ["--dtype", "float8"]}, "unknown dtype"),
        ({"out": "{tmp}/empty.txt"}, "is a file; give a folder"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_any_output(
    teacher, prompts_file, tmp_path, capsys, monkeypatch, change, message
):
    monkeypatch.setattr(PyramidalWanPipeline, "from_pretrained", None)  # no model may load
    (tmp_path / "empty.txt").write_text("\n  \n")
    where = {"teacher": teacher, "prompts": prompts_file, "out": tmp_path / "data"}
    where.update({k: v.format(tmp=tmp_path) for k, v in change.items() if k != "extra"})
    args = synthesize_args(where["teacher"], where["prompts"], where["out"], *change.get("extra", []))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(tmp=tmp_path) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_a_folder_made_with_other_settings_is_refused(teacher, prompts_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "data"
    assert main(synthesize_args(teacher, prompts_file, out, "--videos-per-prompt", "1")) == 0
    before = folder_contents(out)
    monkeypatch.setattr(PyramidalWanPipeline, "from_pretrained", None)
    assert main(synthesize_args(teacher, prompts_file, out, "--seed", "6", "--videos-per-prompt", "1")) == 2
    err = capsys.readouterr().err
    assert "synthesised with other settings (seed differ)" in err
    prompts_file.write_text(PROMPTS[2] + "\n")
    assert main(synthesize_args(teacher, prompts_file, out, "--videos-per-prompt", "1")) == 2
    assert "(num_prompts, prompts_sha256 differ)" in capsys.readouterr().err
    assert folder_contents(out) == before


@pytest.mark.slow
@needs_torchrun
def test_two_processes_write_what_one_writes(teacher, tmp_path):
    """torchrun with 2 gloo CPU processes: 3 prompts x 1 video split 2 + 1, the same files as 1 process."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(synthesize_args(teacher, prompts, one, "--videos-per-prompt", "1", "--threads", "1")) == 0
    result = run_cli_in_two_cpu_processes(
        synthesize_args(teacher, prompts, two, "--videos-per-prompt", "1", "--threads", "1"), standalone=True
    )
    assert result.stdout.count("3 videos in") == 1  # only the main process reports
    assert "3 written, 0 already on disk" in result.stdout
    assert folder_contents(two) == folder_contents(one)
