"""Helpers shared by tests of several areas; tests import it as `helpers` (tests/conftest.py puts tests/
on sys.path)."""

from pyramidal_wan.pyramid import PyramidConfig


def nondefault_pyramid_config(guidance_scale: float) -> PyramidConfig:
    """A 2-stage few-step PyramidConfig with every field off its default, so a round trip must carry each."""
    return PyramidConfig(
        num_stages=2,
        factors=((1, 2, 2),),
        clean_ends=(0.4,),
        wavelet="db2",
        sampler="fewstep",
        default_schedule="2-1",
        shift=2.0,
        guidance_scale=guidance_scale,
    )
