import pytest

from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid import Pyramid, jump_sigma
from pyramidal_wan.pyramid.noise import clean_ends_from_spectrum, detail_snr


def test_suggested_boundaries_put_the_threshold_at_each_noisy_end():
    """A steep spectrum (coarse bands much stronger): every boundary is where its band's SNR = threshold."""
    energies, blocks, threshold = [0.02, 20.0], [8, 8], 0.5
    clean, rules = clean_ends_from_spectrum(energies, blocks, threshold)
    assert rules == ("spectrum", "spectrum")
    assert 0 < clean[0] < clean[1] < 1
    for i, energy in enumerate(energies):
        assert detail_snr(jump_sigma(clean[i], blocks[i]), energy) == pytest.approx(threshold)
    # More detail energy must wait for more noise; a higher threshold drops bands earlier.
    assert clean_ends_from_spectrum(energies, blocks, 2.0)[0][0] < clean[0]
    Pyramid.build(3, clean_ends=clean)  # valid boundaries


@pytest.mark.parametrize("energies", [[0.2, 0.01], [0.25, 0.25], [0.02, 0.1]])
def test_a_weak_coarse_band_falls_back_to_the_even_split(energies):
    """Where the SNR bound of a coarser band is met below the even split of the remaining noise range, the
    boundary is that split (the default's pattern); the finest boundary always follows the spectrum."""
    clean, rules = clean_ends_from_spectrum(energies, [8, 8], 1.0)
    assert rules == ("spectrum", "even split")
    assert detail_snr(jump_sigma(clean[0], 8), energies[0]) == pytest.approx(1.0)
    assert clean[1] == pytest.approx(clean[0] + (1 - clean[0]) / 2)
    assert detail_snr(jump_sigma(clean[1], 8), energies[1]) < 1.0  # the band is drowned there too
    Pyramid.build(3, clean_ends=clean)


def test_even_split_with_four_stages():
    clean, rules = clean_ends_from_spectrum([0.1, 0.1, 0.1], [8, 8, 8], 1.0)
    assert rules == ("spectrum", "even split", "even split")
    c1 = clean[0]
    assert clean[1] == pytest.approx(c1 + (1 - c1) / 3) and clean[2] == pytest.approx(c1 + 2 * (1 - c1) / 3)


def test_bad_energies_are_rejected():
    with pytest.raises(InputError, match="must be positive"):
        clean_ends_from_spectrum([0.0, 0.1], [8, 8], 1.0)
