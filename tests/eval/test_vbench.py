"""`evaluate --suite vbench`: the generation half and the hand-off, with a stub judge in place of the `vbench`
package (which is not installed here: its judges need weights from the network and a GPU)."""

import importlib.util
import json
import sys
import textwrap

import pytest

from pyramidal_wan.cli import main
from pyramidal_wan.eval.vbench import CUSTOM_DIMENSIONS, JUDGE_WEIGHTS, video_name
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.family import assemble_toy_pipeline
from pyramidal_wan.utils.video import read_video

PROMPTS = [
    "a red circle moving left on a dark blue background",
    "a blue square moving up on a dark gray background",
]
# A two-prompt stand-in for VBench_full_info.json: the second prompt serves another dimension only.
FULL_INFO = [
    {"prompt_en": PROMPTS[0], "dimension": ["temporal_flickering", "motion_smoothness"]},
    {"prompt_en": PROMPTS[1], "dimension": ["color"]},
]
STUB = """
import json, os
CALLS = []

class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.device, self.full_info_dir, self.output_path = device, full_info_dir, output_path
        os.makedirs(output_path, exist_ok=True)

    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False, read_frame=False,
                 mode="vbench_standard", **kwargs):
        videos = sorted(os.listdir(videos_path))
        CALLS.append(dict(device=str(self.device), full_info=self.full_info_dir, videos_path=videos_path,
                          name=name, prompt_list=prompt_list, dimensions=dimension_list, local=local,
                          mode=mode, videos=videos))
        results = {d: [0.5 + 0.1 * i, [{"video_path": v, "video_results": 0.5} for v in videos]]
                   for i, d in enumerate(dimension_list)}
        with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as f:
            json.dump(results, f)
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "toy"
    return assemble_toy_pipeline(folder, pyramid_config=PyramidConfig(default_schedule="1-1-1"))


@pytest.fixture
def judge(tmp_path, monkeypatch):
    """A stub `vbench` package (VBench class + VBench_full_info.json) and an empty weight cache."""
    package = tmp_path / "site" / "vbench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(STUB))
    (package / "VBench_full_info.json").write_text(json.dumps(FULL_INFO))
    spec = importlib.util.spec_from_file_location("vbench", package / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "vbench", module)
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return module


def put_weights(cache, *dimensions):
    for dim in dimensions:
        for path in JUDGE_WEIGHTS[dim]:
            (cache / path).parent.mkdir(parents=True, exist_ok=True)
            (cache / path).write_bytes(b"weights")


def evaluate(model, out, *extra):
    return main(
        ["evaluate", "--suite", "vbench", "--model", str(model), "--out", str(out), "--threads", "1", *extra]
    )


def test_missing_package_is_reported_before_any_video(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vbench", None)  # `import vbench` fails as when it is not installed
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "cache"))
    assert evaluate(model, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install vbench" in err and str(tmp_path / "cache") in err
    assert not (tmp_path / "out").exists()


def test_missing_judge_weights_are_reported_before_any_video(model, judge, tmp_path, capsys):
    put_weights(tmp_path / "cache", "temporal_flickering")
    assert (
        evaluate(
            model, tmp_path / "out", "--dimension", "temporal_flickering", "--dimension", "dynamic_degree"
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"missing under {tmp_path / 'cache'}" in err and "raft_model/models/raft-things.pth" in err
    assert not (tmp_path / "out").exists()


def test_standard_suite_layout_and_hand_off(model, judge, tmp_path, capsys):
    put_weights(tmp_path / "cache", "motion_smoothness")
    out = tmp_path / "out"
    dims = ["--dimension", "temporal_flickering", "--dimension", "motion_smoothness"]
    assert evaluate(model, out, *dims) == 0
    videos = out / "toy" / "1-1-1" / "videos"
    # Only the prompt serving the chosen dimensions, five videos, named as VBench looks them up.
    names = [f"{PROMPTS[0]}-{i}.mp4" for i in range(5)]
    assert sorted(p.name for p in videos.iterdir()) == names
    assert read_video(videos / names[0]).shape == (17, 64, 64, 3)
    (call,) = judge.CALLS
    assert call["mode"] == "vbench_standard" and call["prompt_list"] == [] and call["local"] is True
    assert call["dimensions"] == ["temporal_flickering", "motion_smoothness"] and call["videos"] == names
    assert call["full_info"].endswith("VBench_full_info.json") and call["name"] == "toy_1-1-1"
    (record,) = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert record["suite"] == "vbench" and record["mode"] == "vbench_standard" and record["videos"] == 5
    assert record["dimensions"] == {"temporal_flickering": 0.5, "motion_smoothness": 0.6}
    assert record["tflops"] > 0 and record["seconds"] > 0
    assert "temporal_flickering 50.00" in capsys.readouterr().out
    # A second run finds every video and only judges again.
    stamps = {p.name: p.stat().st_mtime_ns for p in videos.iterdir()}
    assert evaluate(model, out, *dims) == 0
    assert {p.name: p.stat().st_mtime_ns for p in videos.iterdir()} == stamps
    assert len(judge.CALLS) == 2
    assert json.loads((out / "records.jsonl").read_text().splitlines()[1])["seconds"] is None


def test_prompt_file_uses_custom_input(model, judge, tmp_path):
    put_weights(tmp_path / "cache", "temporal_flickering")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "out"
    args = ["--prompt-file", str(prompts), "--videos-per-prompt", "1", "--dimension", "temporal_flickering"]
    assert evaluate(model, out, *args, "--schedule", "0-0-1") == 0
    (call,) = judge.CALLS
    assert call["mode"] == "custom_input"
    assert call["prompt_list"] == {video_name(p, 0): p for p in PROMPTS}
    assert sorted(call["videos"]) == sorted(video_name(p, 0) for p in PROMPTS)
    assert call["videos_path"] == str(out / "toy" / "0-0-1" / "videos")


def test_bad_vbench_arguments(model, judge, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    assert evaluate(model, tmp_path / "out", "--prompt-file", str(prompts), "--dimension", "color") == 2
    assert "need the standard prompt suite" in capsys.readouterr().err
    assert evaluate(model, tmp_path / "out", "--videos-per-prompt", "2") == 2
    assert "5 videos per prompt" in capsys.readouterr().err
    assert evaluate(model, tmp_path / "out", "--dimension", "sharpness") == 2
    assert "unknown VBench dimension" in capsys.readouterr().err
    assert "temporal_flickering" in CUSTOM_DIMENSIONS and "color" not in CUSTOM_DIMENSIONS
    with pytest.raises(Exception, match="cannot be a VBench file name"):
        video_name("a/b", 0)
    assert not (tmp_path / "out").exists()
