"""`pyramidal-wan report`: tables from the records only, a deterministic Markdown copy, figures, the sample
grid, the pyramid section, and a page that headless Chromium loads without a single error."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pyramidal_wan.cli import main
from pyramidal_wan.eval.page_check import check_page, find_chromium
from pyramidal_wan.eval.page_check import main as browser_main
from pyramidal_wan.eval.pyramid_view import (
    make_pyramid_view,
    noise_floor,
    radial_power_spectrum,
    stage_nyquist,
)
from pyramidal_wan.eval.report import (
    load_records,
    markdown_report,
    speedup_findings,
    speedup_runs,
    toy_runs,
    vbench_runs,
)
from pyramidal_wan.eval.toybench import evaluate_videos
from pyramidal_wan.pipelines import PyramidalWanPipeline, plan_from_folder
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.family import assemble_toy_pipeline
from pyramidal_wan.toy.world import eval_prompts
from pyramidal_wan.utils.video import write_video

SCENES = eval_prompts(3, "train") + eval_prompts(1, "heldout")
needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="Chromium not installed (apt-get install -y chromium); page test skipped"
)


def fake_run(model, schedule, tflops, seconds, parts, folder, model_path=None, samples=2):
    """ToyBench records of the real renders (so scores are known) with the cost fields evaluate adds, and
    GIF samples of the first prompts saved where evaluate saves them."""
    videos = [scene.render() for scene in SCENES]
    records = evaluate_videos(videos, SCENES, seeds=[0] * len(SCENES), model=model, schedule=schedule)
    for record, video in zip(records, videos):
        sample = None
        if record["prompt_index"] < samples:
            sample = f"records-samples/{model}/{schedule}/p{record['prompt_index']:03d}-s0.gif"
            write_video(folder / sample, video, fps=8)
        record.update(
            tflops=tflops,
            seconds=seconds,
            stage_seconds=parts,
            device="cpu",
            batch_size=4,
            model_path=model_path,
            sample=sample,
        )
    return records


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    model = assemble_toy_pipeline(folder / "toy", pyramid_config=PyramidConfig(default_schedule="1-1-1"))
    records = fake_run(
        "toy",
        "1-1-1",
        0.0015,
        0.75,
        {"text": 0.05, "stage 2": 0.05, "stage 1": 0.15, "stage 0": 0.25, "decode": 0.25},
        folder,
        model_path=str(model),
    )
    # The pyramid view evaluate makes for a pyramidal run (the report itself runs no model).
    pipe = PyramidalWanPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    view = Path("records-pyramid") / "toy" / "1-1-1"
    make_pyramid_view(pipe, plan_from_folder(model, schedule="1-1-1"), folder / view, SCENES[0].caption())
    for record in records:
        record["pyramid_view"] = view.as_posix()
    records += fake_run("toy", "0-0-2", 0.0027, 1.25, {"text": 0.05, "stage 0": 0.9, "decode": 0.3}, folder)
    path = folder / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def report_dir(records_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    markdown = out / "docs" / "results.md"
    args = [
        "report",
        "--results",
        str(records_file),
        "--out",
        str(out / "report"),
        "--markdown",
        str(markdown),
    ]
    assert main(args) == 0
    return out


def test_tables_come_from_the_records_and_the_markdown_is_deterministic(records_file, report_dir):
    runs = toy_runs(load_records([records_file]))
    assert [(r["model"], r["schedule"]) for r in runs] == [("toy", "1-1-1"), ("toy", "0-0-2")]
    text = (report_dir / "report" / "results.md").read_text()
    assert text == (report_dir / "docs" / "results.md").read_text() == markdown_report(runs)
    # Real renders score full marks (so no spread between prompts); every other number is a field of the
    # records.
    assert "| toy | 1-1-1 | 0.0015 | 100.0 | 100.0 | 100.0 ± 0.0 | 100.0 ± 0.0 | 0.75 |" in text
    assert "| toy | 0-0-2 | 0.0027 | 100.0 | 100.0 | 100.0 ± 0.0 | 100.0 ± 0.0 | 1.25 |" in text
    assert "| text | stage 2 | stage 1 | stage 0 | decode | total |" in text
    # The dimension table also gives the Frechet distance, which still orders runs where its score is 0.
    assert "| background | Frechet | FD |" in text and "| 100.0 | 100.0 | 0.0 |" in text
    assert "| toy | 1-1-1 | 0.050 | 0.050 | 0.150 | 0.250 | 0.250 | 0.750 |" in text
    assert not re.search(r"20\d\d-\d\d-\d\d|/tmp/", text)  # no dates, no paths
    # Writing it again gives the same bytes.
    again = report_dir / "again"
    assert main(["report", "--results", str(records_file), "--out", str(again), "--no-pyramid"]) == 0
    assert (again / "results.md").read_text() == text


def test_report_writes_figures_samples_and_the_pyramid(report_dir):
    report = report_dir / "report"
    page = (report / "index.html").read_text()
    for stem in ("quality_vs_tflops", "stage_latency", "pyramid_stages", "pyramid_spectrum"):
        assert (report / "figures" / f"{stem}.png").stat().st_size > 0
        assert (report / "figures" / f"{stem}.svg").read_text().startswith("<?xml")
    # Every file the page names exists inside the report folder (self-contained).
    names = re.findall(r'(?:src|href)="([^"]+)"', page)
    local = [n for n in names if not n.startswith("data:")]
    assert local and all((report / n).is_file() for n in local)
    # The sample grid: the same two prompts (seed 0) for both runs; three stages of the pyramid.
    samples = sorted(p.name for p in (report / "samples").rglob("*.gif"))
    assert samples == ["p000-s0.gif"] * 2 + ["p001-s0.gif"] * 2
    assert sorted(p.name for p in (report / "pyramid").glob("*.gif")) == [f"stage{i}.gif" for i in range(3)]
    assert "The pyramid" in page and "[0.333, 0.850]" in page  # stage 1's sigma range


@needs_chromium
def test_report_page_loads_in_headless_chromium(report_dir):
    result = check_page(report_dir / "report" / "index.html")
    assert result.problems() == []
    assert result.title == "pyramidal-wan results"
    # 4 figures + 2 x 2 samples + 3 pyramid stages, every one decoded by the browser.
    assert len(result.images) == 11 and all(image["ok"] for image in result.images)
    assert browser_main(["check", str(report_dir / "report" / "index.html")]) == 0  # the command-line form


@needs_chromium
def test_page_check_reports_what_does_not_resolve(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><title>broken</title><link rel="icon" href="data:,"></head><body>'
        '<img src="missing.png"><video src="missing.mp4"></video><a href="missing.svg">svg</a>'
        '<script>console.error("boom"); undefinedFunction();</script></body></html>'
    )
    problems = "\n".join(check_page(page).problems())
    for expected in ("image did not load", "video did not load", "broken link", "boom", "undefinedFunction"):
        assert expected in problems


@needs_chromium
def test_screenshot_of_the_report(records_file, tmp_path):
    png = tmp_path / "docs" / "report.png"
    args = ["report", "--results", str(records_file), "--out", str(tmp_path / "r"), "--no-pyramid"]
    assert main([*args, "--screenshot", str(png), "--width", "900"]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 900 and height > 900  # the whole page, not just the window


def test_white_noise_spectrum_is_flat_at_its_variance():
    generator = torch.Generator().manual_seed(0)
    noise = 0.5 * torch.randn(16, 8, 32, 32, generator=generator)
    freqs, power = radial_power_spectrum(noise)
    assert freqs[0] == pytest.approx(1 / 32) and freqs[-1] == pytest.approx(0.5)
    np.testing.assert_allclose(power, 0.25, rtol=0.15)  # 128 planes: a few % noise per ring
    assert noise_floor(1 / 3) == pytest.approx(0.25) and noise_floor(1.0) == float("inf")
    assert stage_nyquist(((2, 2, 2), (2, 2, 2)), 2) == pytest.approx(0.125)


def test_bad_report_arguments_fail_before_any_work(records_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", "--results", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    assert "is not a file" in capsys.readouterr().err
    args = ["report", "--results", str(records_file), "--out", str(out), "--pyramid-run", "other"]
    assert main(args) == 2
    assert "toy:1-1-1, toy:0-0-2" in capsys.readouterr().err
    assert not Path(out).exists()


def test_vbench_records_get_their_own_table():
    record = {
        "suite": "vbench",
        "model": "wan",
        "schedule": "2-2-1",
        "tflops": 282.1,
        "seconds": 3.5,
        "videos": 10,
        "dimensions": {"subject_consistency": 0.9512, "dynamic_degree": 0.5},
    }
    text = markdown_report(toy_runs([record]), vbench_runs([record, {**record, "seconds": 3.0}]))
    assert "## ToyBench" not in text and "## VBench" in text
    assert "| model | schedule | TFLOPs | s / video | videos | subject_consistency | dynamic_degree |" in text
    assert "| wan | 2-2-1 | 282.1 | 3.00 | 10 | 95.12 | 50.00 |" in text  # the last record of a run counts


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"\x8f\xa3\x00\x17random bytes\n{}\n", "records.jsonl:1 is not UTF-8 text"),
        (b'["a", "list"]\n', "records.jsonl:1 is a JSON list"),
        (b'{"suite": "vbench", "model": "m", "schedule": 5, "dimensions": {}}\n', "'schedule' = 5"),
    ],
)
def test_report_refuses_bad_records_in_one_line(tmp_path, capsys, content, problem):
    path = tmp_path / "records.jsonl"
    path.write_bytes(content)
    assert main(["report", "--results", str(path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report").exists()


def test_speedup_table_measures_every_run_against_base_0_0_50(tmp_path):
    parts = {"text": 0.05, "stage 0": 0.9, "decode": 0.3}
    records = fake_run("base", "0-0-50", 0.1, 2.0, parts, tmp_path, samples=0)
    records += fake_run("pyramidal", "10-10-5:dpm2m", 0.01, 0.25, parts, tmp_path, samples=0)
    records += fake_run("few-step", "2-2-1", 0.002, 0.05, parts, tmp_path, samples=0)
    for record in records:
        record["sampler"] = "fewstep" if record["model"] == "few-step" else "multistep"
    path = tmp_path / "speedups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "report"
    assert (
        main(["report", "--results", str(path), "--speedups", str(path), "--out", str(out), "--no-pyramid"])
        == 0
    )
    text = (out / "results.md").read_text()
    assert "## Speed-ups: quality against cost" in text
    assert "| pyramidal | 10-10-5:dpm2m | 100.0 ± 0.0 | +0.0 | 0.01 | 10.00 | 0.25 | 8.00 | 4 |" in text
    assert "| few-step | 2-2-1 | 100.0 ± 0.0 | +0.0 | 0.002 | 50.00 | 0.05 | 40.00 | 4 |" in text
    assert "within 2 points of base 0-0-50: pyramidal 10-10-5:dpm2m, 10.00x fewer FLOPs" in text
    assert (
        "Few-step end-to-end speed-ups (text + stages + decode): few-step 2-2-1 40.00x (+0.0 points)." in text
    )
    assert "Speed-ups: quality against cost" in (out / "index.html").read_text()


def test_speedup_findings_keep_only_runs_as_good_as_base():
    base = {"model": "base", "schedule": "0-0-50", "tflops": 0.1, "seconds": 2.0, "total": 70.0}
    runs = [
        base,
        {"model": "p", "schedule": "4-4-3", "tflops": 0.005, "seconds": 0.2, "total": 66.0},  # 4 points down
        {"model": "p", "schedule": "10-10-5", "tflops": 0.02, "seconds": 0.5, "total": 68.5},
    ]
    runs = speedup_runs([{**r, "sampler": "multistep"} for r in runs])
    assert speedup_findings(runs) == [
        "Cheapest multi-step run within 2 points of base 0-0-50: p 10-10-5, 5.00x fewer FLOPs, 4.00x less "
        "CPU time (-1.5 points)."
    ]
    assert speedup_findings(runs[:2]) == ["No multi-step run is within 2 points of base 0-0-50."]
    # Every few-step run is listed, smallest speed-up first: the cheaper decoder's quality cost shows.
    few = [
        {"model": "f", "schedule": "2-2-1+tiny", "tflops": 0.002, "seconds": 0.05, "total": 64.0},
        {"model": "f", "schedule": "2-2-1", "tflops": 0.002, "seconds": 0.2, "total": 69.0},
    ]
    runs = speedup_runs([{**base, "sampler": "multistep"}, *({**r, "sampler": "fewstep"} for r in few)])
    assert speedup_findings(runs)[1] == (
        "Few-step end-to-end speed-ups (text + stages + decode): f 2-2-1 10.00x (-1.0 points); "
        "f 2-2-1+tiny 40.00x (-6.0 points)."
    )


def test_speedups_without_base_0_0_50_fail_in_one_line(records_file, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["report", "--results", str(records_file), "--speedups", str(records_file), "--out", str(out)]
    assert main(args) == 2
    assert "no base:0-0-50 run to measure against (found: toy:1-1-1, toy:0-0-2)" in capsys.readouterr().err
    assert not out.exists()
