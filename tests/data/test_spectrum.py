import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pyramidal_wan.cli import main
from pyramidal_wan.data.cache import EMPTY_PROMPT, MANIFEST, CachedLatents
from pyramidal_wan.data.spectrum import detail_energies
from pyramidal_wan.pyramid import Pyramid, PyramidConfig, jump_sigma
from pyramidal_wan.pyramid.noise import clean_ends_from_spectrum, detail_snr


def smooth_cache(folder, n=16):
    """A latent-construction cache of smooth random fields: fine detail bands carry little energy."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(n, 4, 2, 4, 4, generator=g)
    x0 = F.interpolate(coarse, size=(9, 16, 16), mode="trilinear", align_corners=True)
    p = Pyramid.build(3)
    folder.mkdir()
    tensors = {f"latents.{i}": p.down_to(x0, i).contiguous() for i in range(3)}
    save_file({**tensors, "prompt_embeds": torch.zeros(n, 4, 8)}, folder / "shard-00000.safetensors")
    save_file({"prompt_embeds": torch.zeros(4, 8)}, folder / EMPTY_PROMPT)
    settings = {"num_stages": 3, "factors": [[2, 2, 2], [2, 2, 2]], "construction": "latent"}
    manifest = {"settings": settings, "shards": [{"file": "shard-00000.safetensors", "count": n}]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return x0


def test_detail_energies_are_the_detail_band_power(tmp_path):
    x0 = smooth_cache(tmp_path / "cache")
    p = Pyramid.build(3)
    energies = detail_energies(CachedLatents(tmp_path / "cache"), p, batch_size=5)
    stage1 = p.down(x0, 0)
    expected = [(x0 - p.project(x0, 0)).square().mean(), (stage1 - p.project(stage1, 1)).square().mean()]
    assert all(abs(a - float(b)) < 1e-6 for a, b in zip(energies, expected))
    assert energies[0] < energies[1]  # a smooth field: the finest band is the weakest


def test_suggest_stages_writes_a_config_with_the_threshold_at_each_noisy_end(tmp_path, capsys):
    smooth_cache(tmp_path / "cache")
    out = tmp_path / "stages.json"
    assert main(["suggest-stages", "--data", str(tmp_path / "cache"), "--snr", "0.5", "--out", str(out)]) == 0
    config = PyramidConfig.from_dict(json.loads(out.read_text()))
    energies = detail_energies(CachedLatents(tmp_path / "cache"), Pyramid.build(3))
    clean, rules = clean_ends_from_spectrum(energies, [8, 8], 0.5)
    assert config.clean_ends == clean
    assert abs(detail_snr(jump_sigma(config.clean_ends[0], 8), energies[0]) - 0.5) < 1e-9
    printed = capsys.readouterr().out
    assert "suggested sigma_c" in printed and all(rule in printed for rule in rules)


def test_a_flat_spectrum_still_gives_ordered_stages(tiny_cache, capsys):
    """A random VAE's latents are not smooth: the coarse band is no stronger than the fine one, so the
    coarse boundary falls back to the even split and the suggestion is still a valid pyramid."""
    assert main(["suggest-stages", "--data", str(tiny_cache), "--snr", "0.5"]) == 0
    printed = capsys.readouterr().out
    config = PyramidConfig.from_dict(json.loads(printed.strip().splitlines()[-1]))
    assert 0 < config.clean_ends[0] < config.clean_ends[1] < 1
    config.pyramid()
