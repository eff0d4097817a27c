from pyramidal_wan.cli import main
from pyramidal_wan.models.checkpoint import load_pyramid_config
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.toy.vae import build_vae


def test_assemble_writes_a_loadable_plain_toy_pipeline(tmp_path, capsys):
    build_vae(0).save_pretrained(tmp_path / "vae")
    assert main(["toy", "assemble", "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "toy")]) == 0
    assert "wrote" in capsys.readouterr().out
    pipe = PyramidalWanPipeline.from_pretrained(tmp_path / "toy")
    assert (pipe.config.default_num_frames, pipe.config.default_height, pipe.config.default_width) == (
        17,
        64,
        64,
    )
    assert pipe.config.default_negative_prompt == ""
    assert load_pyramid_config(tmp_path / "toy") is None  # a plain model until a pyramidal fine-tune
    video = pipe(
        "a red circle moving left on a dark blue background", schedule="0-0-2", output_type="np"
    ).frames
    assert video.shape == (1, 17, 64, 64, 3)


def test_assemble_rejects_a_missing_vae(tmp_path, capsys):
    assert main(["toy", "assemble", "--vae", str(tmp_path / "nope"), "--out", str(tmp_path / "toy")]) == 2
    assert "not a diffusers VAE folder" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()
