"""Model cards: `toy bundle`, `export` and `card` write README.md from a folder's configs and records."""

import yaml

from pyramidal_wan.cli import main
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.family import assemble_toy_pipeline
from pyramidal_wan.toy.vae import build_vae


def test_bundled_member_gets_a_card_with_recipe_flops_and_toybench_rows(tmp_path, capsys):
    vae = build_vae(0)
    base = assemble_toy_pipeline(tmp_path / "base", vae=vae)
    run = tmp_path / "run"
    model = assemble_toy_pipeline(run / "model", vae=vae, pyramid_config=PyramidConfig())
    config = {"model": {"init": str(base)}, "objective": {"name": "pyramidal"}, "train": {"steps": 7}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = tmp_path / "eval" / "toybench.jsonl"
    args = ["evaluate", "--model", str(model), "--schedule", "1-1-1", "--prompts", "2", "--heldout", "0"]
    assert main([*args, "--samples", "0", "--out", str(records), "--threads", "1"]) == 0

    family = tmp_path / "family"
    args = ["toy", "bundle", "--model", str(model), "--name", "pyr", "--into", str(family)]
    assert main([*args, "--results", str(records)]) == 0
    card = (family / "pyr" / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: diffusers\n")
    assert f'base_model: "{base}"' in card  # the run's model.init
    assert f"Trained by the run {run} (pyramidal, 7 steps, from {base})" in card
    assert '| default_schedule | "20-20-10" |' in card and "17 frames of 64x64" in card
    # FLOPs of the default schedule (CFG) and of the evaluated one, and the evaluated ToyBench row.
    assert "| 20-20-10 | multistep | CFG 5 |" in card and "| 1-1-1 | multistep | CFG 5 |" in card
    assert "## ToyBench" in card and "| run | 1-1-1 |" in card
    assert f"pyramidal-wan toy bundle --model {model} --name pyr" in card

    # `card` rewrites it: another base and a note; without records, no evaluation rows.
    note = "ToyBench on the full prompt set: docs/results.md."
    args = ["card", str(family / "pyr"), "--base", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "--note", note]
    assert main([*args, "--license", "other"]) == 0
    card = (family / "pyr" / "README.md").read_text()
    assert 'base_model: "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"' in card and "license: other" in card
    assert note in card and "No evaluation records were given" in card
    assert main(["card", str(tmp_path / "nowhere")]) == 2
    assert "not a diffusers model folder" in capsys.readouterr().err
