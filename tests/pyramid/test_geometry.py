import pytest

from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid import is_baseline_schedule, parse_schedule, stage_geometry


def test_paper_stages():
    stages = stage_geometry(81, 448, 832)
    assert [s.pixel for s in stages] == [(81, 448, 832), (41, 224, 416), (21, 112, 208)]
    assert [s.latent for s in stages] == [(21, 56, 104), (11, 28, 52), (6, 14, 26)]
    assert [s.tokens for s in stages] == [(21, 28, 52), (11, 14, 26), (6, 7, 13)]
    assert [s.num_tokens for s in stages] == [30576, 4004, 546]


def test_toy_stages_with_4x_vae():
    stages = stage_geometry(17, 64, 64, vae_scale_spatial=4)
    assert [s.latent for s in stages] == [(5, 16, 16), (3, 8, 8), (2, 4, 4)]


@pytest.mark.parametrize("num_stages", [1, 2, 4])
def test_any_stage_count(num_stages):
    stages = stage_geometry(129, 512, 1024, num_stages=num_stages)
    assert len(stages) == num_stages
    assert stages[0].latent == (33, 64, 128)
    for fine, coarse in zip(stages, stages[1:]):
        assert coarse.latent == (1 + (fine.latent[0] - 1) // 2, fine.latent[1] // 2, fine.latent[2] // 2)


def test_spatial_only_and_temporal_only_pyramids():
    spatial = stage_geometry(81, 448, 832, factors=[(1, 2, 2), (1, 2, 2)])
    assert [s.latent for s in spatial] == [(21, 56, 104), (21, 28, 52), (21, 14, 26)]
    temporal = stage_geometry(81, 448, 832, num_stages=2, factors=[(2, 1, 1)])
    assert [s.latent for s in temporal] == [(21, 56, 104), (11, 56, 104)]


@pytest.mark.parametrize(
    "size, message",
    [
        ((80, 448, 832), "num_frames 80 must be 4k+1 for the VAE; use 77 or 81"),
        ((81, 480, 832), "height 480 must be divisible by 64 (8x VAE x 2 patch x 4 pyramid); use 448 or 512"),
        ((81, 448, 840), "width 840 must be divisible by 64"),
        ((13, 448, 832), "(num_frames - 1 must be a positive multiple of 16); use 17 or 33, or set f_t=1"),
    ],
)
def test_bad_sizes_name_the_fix(size, message):
    with pytest.raises(InputError) as err:
        stage_geometry(*size)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "factors, message",
    [
        ([(2, 2, 2)], "3 stages need 2 transition factors"),
        ([(2, 2, 2), (1, 1, 1)], "must reduce at least one axis"),
        ([(2, 2, 2), (3, 2, 2)], "must be three of 1 or 2"),
    ],
)
def test_bad_factors(factors, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        stage_geometry(81, 448, 832, factors=factors)


def test_parse_schedule():
    assert parse_schedule("20-20-10", 3) == (20, 20, 10)
    assert parse_schedule([2, 2, 1], 3) == (2, 2, 1)
    assert is_baseline_schedule(parse_schedule("0-0-50", 3))
    assert not is_baseline_schedule(parse_schedule("1-1-1", 3))
    assert is_baseline_schedule(parse_schedule("50", 1))


@pytest.mark.parametrize(
    "text, message",
    [
        ("20-10", "has 2 entries but the model has 3 stages"),
        ([2, -1, 1], "negative"),
        ("0-2-1", "only allowed in the plain baseline form"),
        ("2-2-0", "at least one step at full resolution"),
        ("a-b-c", "must be 3 integers joined by '-'"),
    ],
)
def test_bad_schedules(text, message):
    with pytest.raises(InputError, match=message):
        parse_schedule(text, 3)
