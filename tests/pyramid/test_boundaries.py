import pytest

from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid import Pyramid, jump_sigma
from pyramidal_wan.pyramid.noise import clean_ends_from_spectrum, detail_snr


def test_suggested_boundaries_put_the_threshold_at_each_noisy_end():
    energies, blocks, threshold = [0.02, 0.1], [8, 8], 0.5
    clean = clean_ends_from_spectrum(energies, blocks, threshold)
    assert 0 < clean[0] < clean[1] < 1
    for i, energy in enumerate(energies):
        assert detail_snr(jump_sigma(clean[i], blocks[i]), energy) == pytest.approx(threshold)
    # More detail energy must wait for more noise; a higher threshold drops bands earlier.
    assert clean_ends_from_spectrum(energies, blocks, 2.0)[0] < clean[0]
    Pyramid.build(3, clean_ends=clean)  # valid boundaries


def test_unordered_energies_are_rejected():
    with pytest.raises(InputError, match="do not increase"):
        clean_ends_from_spectrum([0.2, 0.01], [8, 8], 1.0)
    with pytest.raises(InputError, match="must be positive"):
        clean_ends_from_spectrum([0.0, 0.1], [8, 8], 1.0)
