"""`pyramidal-wan toy ...`: sub-commands run, and bad arguments exit 2 with one line."""

import json

import pytest

from pyramidal_wan.cli import main

TINY_VAE = [
    "--num-frames",
    "5",
    "--resolution",
    "32",
    "--crop-frames",
    "5",
    "--crop-size",
    "16",
    "--batch-size",
    "1",
    "--stats-clips",
    "2",
    "--eval-clips",
    "1",
    "--warmup-steps",
    "1",
]


def test_make_dataset_command(tmp_path, capsys):
    assert main(["toy", "make-dataset", "--out", str(tmp_path), "--n", "2", "--seed", "3"]) == 0
    lines = (tmp_path / "captions.jsonl").read_text().splitlines()
    assert [json.loads(line)["seed"] for line in lines] == [3, 3]
    assert "wrote 2 train clips" in capsys.readouterr().out


def test_train_vae_command_and_resume(tmp_path, capsys):
    out = str(tmp_path / "vae-run")
    assert main(["toy", "train-vae", "--out", out, "--steps", "2", "--checkpoint-every", "1", *TINY_VAE]) == 0
    assert main(["toy", "train-vae", "--out", out, "--steps", "3", "--resume"]) == 0
    assert json.loads((tmp_path / "vae-run" / "metrics.json").read_text())["step"] == 3
    assert "held-out reconstruction PSNR" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["toy", "make-dataset", "--out", "{tmp}", "--n", "0"], "argument --n: 0 must be at least 1"),
        (
            ["toy", "train-vae", "--out", "{tmp}", "--batch-size", "0"],
            "argument --batch-size: 0 must be at least 1",
        ),
        (["toy", "train-vae", "--out", "{tmp}", "--resolution", "30"], "divisible by 4"),
        (["toy", "train-vae", "--out", "{tmp}", "--resume"], "no toy-VAE run to resume"),
        (
            ["toy", "train-vae", "--out", "{tmp}", "--threads", "0"],
            "argument --threads: 0 must be at least 1",
        ),
        (
            ["toy", "train-vae", "--out", "{tmp}", "--latent-noise", "-0.5"],
            "argument --latent-noise: -0.5 must be at least 0",
        ),
        (
            ["toy", "train-vae", "--out", "{tmp}", "--decoder", "tiny", "--init", "V"]
            + ["--latent-noise", "0.5"],
            "add --decoder-target vae",
        ),
        (
            ["toy", "train-vae", "--out", "{tmp}", "--decoder", "tiny", "--init", "V", "--decoder-target"]
            + ["vae", "--latents", "{tmp}.safetensors"],
            "not a latents file",
        ),
        (
            ["toy", "sample-latents", "--model", "{tmp}", "--n", "2", "--out", "{tmp}.safetensors"],
            "not found; expected a diffusers Wan pipeline folder",
        ),
        (
            ["toy", "train-vae", "--out", "{tmp}", "--tiny-channels", "32,x"],
            "argument --tiny-channels: '32,x' is not a comma-separated list of integers",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing written, not even a run lock


def test_unknown_split_is_an_argparse_error(tmp_path):
    assert main(["toy", "make-dataset", "--out", str(tmp_path), "--n", "1", "--split", "test"]) == 2
