"""Tiny random Wan components for pipeline tests: a 2-layer toy-size transformer, the toy VAE and text stack.

Everything is built in code under fixed seeds (nothing is downloaded). 17x64x64 videos map to 16x5x16x16
latents (toy VAE: 4x time, 4x space), and three (2, 2, 2) stages to 320 / 48 / 8 transformer tokens.
"""

from diffusers import FlowMatchEulerDiscreteScheduler
from helpers import (  # noqa: F401 (re-exported: the pipeline tests import them from here)
    TINY_TRANSFORMER,
    build_components,
    build_i2v_components,
    conditioning_image,
)

from pyramidal_wan.models.ppf import PPFTransformer
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pyramid import PyramidConfig

SIZE = {"num_frames": 17, "height": 64, "width": 64}
PROMPT = "a red circle moving left on a dark blue background"


def build_ppf_pipeline(seed: int = 0, **sampling) -> PyramidalWanPipeline:
    """`build_pipeline` as a patch-pyramid (PPF) model: the transformer in freshly initialised stage patch
    layers (METHOD.md 9, default 3 stages), sampled with `PyramidConfig(kind="patch", **sampling)`."""
    config = PyramidConfig(kind="patch", **sampling)
    components = build_components(seed)
    components["transformer"] = PPFTransformer(components["transformer"], config)
    return build_pipeline(config, seed, components)


def build_pipeline(
    pyramid_config: PyramidConfig | None = None, seed: int = 0, components: dict | None = None
) -> PyramidalWanPipeline:
    """A toy-size pipeline whose defaults are 17x64x64 and an empty negative prompt."""
    pipe = PyramidalWanPipeline(
        **(build_components(seed) if components is None else components),
        pyramid_config=pyramid_config,
        default_num_frames=SIZE["num_frames"],
        default_height=SIZE["height"],
        default_width=SIZE["width"],
        default_negative_prompt="",
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class BaselineGridScheduler(FlowMatchEulerDiscreteScheduler):
    """Flow-matching Euler whose `set_timesteps(N)` uses the project's baseline grid.

    diffusers' default grid is linspace(1, 1/1000, N); the project's is shift(1 - k/N), k = 0..N, ending
    exactly at 0. Given the unshifted levels 1 - k/N (k < N) as `sigmas`, the scheduler applies the same
    shift s r / (1 + (s - 1) r) and appends the terminal 0 itself.
    """

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        levels = [1.0 - k / num_inference_steps for k in range(num_inference_steps)]
        super().set_timesteps(sigmas=levels, device=device)
