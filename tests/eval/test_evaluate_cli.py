import json

from pyramidal_wan.cli import main
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.family import assemble_toy_pipeline


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
    assert main(args) == 0  # everything is already scored: nothing is generated again
    assert len(out.read_text().splitlines()) == 6
    assert "cached" in capsys.readouterr().out


def test_evaluate_checks_schedules_before_generating(tmp_path, capsys):
    model = assemble_toy_pipeline(tmp_path / "toy")
    out = tmp_path / "records.jsonl"
    assert main(["evaluate", "--model", str(model), "--schedule", "2-1", "--out", str(out)]) == 2
    assert "has 2 entries but the model has 3 stages" in capsys.readouterr().err
    assert not out.exists()
