import json
import os
import subprocess
import sys

import pytest

from pyramidal_wan.cli import main
from pyramidal_wan.pipelines import plan_from_folder
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.family import assemble_toy_pipeline
from pyramidal_wan.utils.video import read_video


def test_evaluate_writes_records_and_resumes(tmp_path, capsys):
    model = assemble_toy_pipeline(tmp_path / "toy", pyramid_config=PyramidConfig(default_schedule="2-2-1"))
    out = tmp_path / "records.jsonl"
    args = [
        "evaluate",
        "--model",
        str(model),
        "--schedule",
        "1-1-1",
        "--schedule",
        "0-0-2",
        "--prompts",
        "2",
        "--heldout",
        "1",
        "--samples",
        "2",
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    assert main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6 and {r["schedule"] for r in lines} == {"1-1-1", "0-0-2"}
    table = capsys.readouterr().out
    assert "1-1-1" in table and "0-0-2" in table and "held-out total" in table
    assert "stage 2" in table and "decode" in table and "transformer" in table  # seconds by part
    # What each video cost is in its record: TFLOPs, seconds, and seconds per part of the call.
    parts = {
        "1-1-1": ["text", "stage 2", "stage 1", "stage 0", "decode"],
        "0-0-2": ["text", "stage 0", "decode"],
    }
    for record in lines:
        assert record["tflops"] > 0 and record["model_path"] == str(model.resolve())
        assert list(record["stage_seconds"]) == parts[record["schedule"]]
        assert record["seconds"] == pytest.approx(sum(record["stage_seconds"].values()))
        # the transformer forwards are part of the stages' time
        stages = sum(s for part, s in record["stage_seconds"].items() if part.startswith("stage"))
        assert 0 < record["transformer_seconds"] <= stages
        assert record["device"] == "cpu" and record["batch_size"] == 8
        assert record["sampler"] == plan_from_folder(model, schedule=record["schedule"]).sampler
        # GIFs of the first two prompts (seed 0) beside the records, for the report.
        if record["prompt_index"] < 2:
            sample = tmp_path / record["sample"]
            assert sample.parent == tmp_path / "records-samples" / "toy" / record["schedule"]
            assert read_video(sample).shape == (17, 64, 64, 3)
        else:
            assert record["sample"] is None
    assert main(args) == 0  # everything is already scored: nothing is generated again
    assert len(out.read_text().splitlines()) == 6
    assert capsys.readouterr().out == table  # the table comes from the records


def test_evaluate_checks_schedules_before_generating(tmp_path, capsys):
    model = assemble_toy_pipeline(tmp_path / "toy")
    out = tmp_path / "records.jsonl"
    assert main(["evaluate", "--model", str(model), "--schedule", "2-1", "--out", str(out)]) == 2
    assert "has 2 entries but the model has 3 stages" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_names_runs_by_solver_and_cache(tmp_path, capsys):
    model = assemble_toy_pipeline(tmp_path / "toy")
    out = tmp_path / "records.jsonl"
    common = ["evaluate", "--model", str(model), "--out", str(out), "--threads", "1", "--samples", "0"]
    assert main([*common, "--schedule", "2-2-1", "--cache", "teacache"]) == 2
    assert "unknown cache 'teacache'" in capsys.readouterr().err and not out.exists()
    assert main([*common, "--schedule", "4-4-4", "--cache", "magcache"]) == 2  # no calibrated ratios
    assert "calibrate-magcache" in capsys.readouterr().err and not out.exists()
    run = [
        "--schedule",
        "4-4-4",
        "--solver",
        "dpm2m",
        "--cache",
        "taylorseer",
        "--prompts",
        "1",
        "--heldout",
        "0",
    ]
    assert main([*common, *run]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["schedule"] == "4-4-4:dpm2m+taylorseer"
    assert "4-4-4:dpm2m+taylorseer" in capsys.readouterr().out
    # A tiny decoder is part of the run's name, and is checked against the model's VAE first.
    from pyramidal_wan.models.tiny_decoder import TinyWanDecoder

    TinyWanDecoder(channels=(8, 8, 8, 8), blocks=(0, 0, 0, 0), time_factors=(2, 2, 1)).save_pretrained(
        tmp_path / "wide"
    )
    assert main([*common, "--schedule", "2-2-1", "--decoder", str(tmp_path / "wide")]) == 2
    assert "use a decoder trained for this VAE" in capsys.readouterr().err
    TinyWanDecoder().save_pretrained(tmp_path / "tiny-decoder-small")
    few = ["--schedule", "2-2-1", "--prompts", "1", "--heldout", "0"]
    assert main([*common, *few, "--decoder", str(tmp_path / "tiny-decoder-small")]) == 0
    assert json.loads(out.read_text().splitlines()[-1])["schedule"] == "2-2-1+tiny-decoder-small"


def test_vae_ceiling_scores_reconstructions_of_real_clips(tmp_path, capsys):
    from pyramidal_wan.toy.vae import build_vae

    build_vae(0).save_pretrained(tmp_path / "vae")
    out = tmp_path / "eval" / "records.jsonl"  # a folder that does not exist yet
    assert (
        main(
            [
                "evaluate",
                "--vae-ceiling",
                str(tmp_path / "vae"),
                "--prompts",
                "2",
                "--heldout",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(out.read_text().splitlines()) == 3
    assert "VAE ceiling (vae)" in capsys.readouterr().out
    assert main(["evaluate", "--out", str(out)]) == 2
    assert "give at least one --model" in capsys.readouterr().err


LAUNCHER = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(LAUNCHER), reason="torchrun not installed beside this Python")
def test_two_processes_share_the_prompts(tmp_path):
    """torchrun with 2 gloo processes: each generates its block of the prompts into its part file, the main
    process merges them into one records file and prints the table once."""
    model = assemble_toy_pipeline(tmp_path / "toy", pyramid_config=PyramidConfig(default_schedule="1-1-1"))
    out = tmp_path / "eval" / "records.jsonl"
    cmd = [LAUNCHER, "--nproc_per_node", "2", "-m", "pyramidal_wan.cli", "evaluate", "--model", str(model)]
    cmd += ["--prompts", "3", "--heldout", "1", "--samples", "4", "--out", str(out), "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["prompt_index"] for r in records) == [0, 1, 2, 3]
    assert not list(out.parent.glob("records.part*.jsonl"))
    assert result.stdout.count("held-out total") == 1
    assert all((out.parent / r["sample"]).is_file() for r in records)


def test_model_names_of_bundled_folders_and_run_exports(tmp_path):
    from pyramidal_wan.cli.evaluate import model_name

    assert model_name("models/toy/base") == "base"
    assert model_name("runs/toy/pyramidal/model") == "pyramidal"
    assert model_name(str(tmp_path / "distill-dmd" / "model-step750")) == "distill-dmd-step750"
    assert model_name("runs/toy/base/model/") == "base"
