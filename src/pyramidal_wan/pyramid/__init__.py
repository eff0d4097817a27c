"""Pure math of pyramidal flow matching: geometry, operators, noise, forward process, samplers.

Imports only torch and math (plus tqdm for progress); no models, no I/O.
"""

from pyramidal_wan.pyramid.config import PyramidConfig
from pyramidal_wan.pyramid.geometry import StageGeometry, is_baseline_schedule, parse_schedule, stage_geometry
from pyramidal_wan.pyramid.noise import inverse_jump_sigma, jump_sigma, randn, stage_boundaries
from pyramidal_wan.pyramid.operators import WAVELETS, Transfer, top_up
from pyramidal_wan.pyramid.pyramid import PLAIN_SEGMENT, Pyramid, Segment
from pyramidal_wan.pyramid.sampling import (
    SOLVERS,
    StageSteps,
    get_fewstep_grid,
    get_multistep_grid,
    get_ppf_grid,
    get_ppf_segments,
    ppf_stage_of,
    sample_dpmpp_2m,
    sample_euler,
    sample_ppf_euler,
    sample_ppf_few_step,
    sample_pyramid_euler,
    sample_pyramid_few_step,
    start_stage,
)

__all__ = [
    "PLAIN_SEGMENT",
    "SOLVERS",
    "WAVELETS",
    "Pyramid",
    "PyramidConfig",
    "Segment",
    "StageGeometry",
    "StageSteps",
    "Transfer",
    "get_fewstep_grid",
    "get_multistep_grid",
    "get_ppf_grid",
    "get_ppf_segments",
    "inverse_jump_sigma",
    "is_baseline_schedule",
    "jump_sigma",
    "parse_schedule",
    "ppf_stage_of",
    "randn",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_ppf_euler",
    "sample_ppf_few_step",
    "sample_pyramid_euler",
    "sample_pyramid_few_step",
    "stage_boundaries",
    "stage_geometry",
    "start_stage",
    "top_up",
]
