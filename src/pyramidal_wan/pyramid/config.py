"""The pyramid settings a checkpoint carries (saved as `pyramid_config.json` beside its weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid.geometry import check_factors, parse_schedule
from pyramidal_wan.pyramid.operators import WAVELETS
from pyramidal_wan.pyramid.pyramid import Pyramid, default_clean_ends

SAMPLERS = ("multistep", "fewstep")
# "resolution": the latent is resampled per stage (METHOD.md 1-5); "patch": PPF, the latent stays at full
# resolution and each stage has its own patchify kernel (METHOD.md 9).
KINDS = ("resolution", "patch")


@dataclass(frozen=True)
class PyramidConfig:
    """How a model must be sampled: its stages, operators, boundaries and default sampler."""

    num_stages: int = 3  # S; 1 is plain Wan
    factors: tuple[tuple[int, int, int], ...] | None = None  # (f_t, f_h, f_w) per transition; None: 2s
    clean_ends: tuple[float, ...] | None = None  # sigma_c of stages 1..S-1; None = equal thirds
    wavelet: str = "haar"  # transfer operator: "haar" (avg-pool / nearest) or "db2"
    sampler: str = "multistep"  # "multistep" (Euler + jumps, CFG) or "fewstep" (x0 + re-noise, no CFG)
    default_schedule: str = "20-20-10"  # steps per stage, lowest resolution first
    shift: float = 1.0  # multi-step grid shift within each stage
    guidance_scale: float = 5.0  # standard CFG w; 1.0 disables guidance
    kind: str = "resolution"  # "resolution" pyramid or "patch" pyramid (PPF, METHOD.md 9)

    def __post_init__(self):
        factors = check_factors(self.factors, self.num_stages)
        object.__setattr__(self, "factors", factors)
        clean = self.clean_ends if self.clean_ends is not None else default_clean_ends(self.num_stages)
        object.__setattr__(self, "clean_ends", tuple(float(c) for c in clean))
        if self.wavelet not in WAVELETS:
            raise InputError(f"unknown wavelet {self.wavelet!r}; choose one of {', '.join(sorted(WAVELETS))}")
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.kind not in KINDS:
            raise InputError(f"unknown pyramid kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        parse_schedule(self.default_schedule, self.num_stages)
        self.pyramid()  # validates the boundaries

    def pyramid(self) -> Pyramid:
        return Pyramid.build(self.num_stages, self.factors, self.clean_ends, self.wavelet)

    def to_dict(self) -> dict:
        return stage_config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PyramidConfig:
        return stage_config_from_dict(cls, d, "pyramid config")


def stage_config_to_dict(config) -> dict:
    """A JSON-ready dict of a stage-layout dataclass (tuples of factors and clean ends become lists)."""
    d = asdict(config)
    d["factors"] = [list(f) for f in config.factors]
    d["clean_ends"] = list(config.clean_ends)
    return d


def stage_config_from_dict(cls, d: dict, what: str):
    """The inverse of `stage_config_to_dict`, rejecting unknown keys with a one-line InputError."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown {what} keys {unknown}; valid keys: {sorted(known)}")
    d = dict(d)
    if d.get("factors") is not None:
        d["factors"] = tuple(tuple(f) for f in d["factors"])
    if d.get("clean_ends") is not None:
        d["clean_ends"] = tuple(d["clean_ends"])
    return cls(**d)
