"""The one description of a pyramid: `PyramidConfig`, saved as `pyramid_config.json` beside a model's weights.

Its stage layout (kind, stages, factors, clean ends, wavelet and, for the patch pyramid, the stage embedding
and RoPE positions) is what a model is; its sampling defaults (sampler, schedule, shift, guidance) are how
`generate` samples it without flags. The pipeline, the trainer (a training config's `pyramid:` section),
the distiller, `flops` and `bench` all read this one type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid.geometry import check_factors, cumulative_factors, parse_schedule
from pyramidal_wan.pyramid.operators import WAVELETS
from pyramidal_wan.pyramid.pyramid import Pyramid, default_clean_ends
from pyramidal_wan.pyramid.sampling import SOLVERS, get_ppf_segments
from pyramidal_wan.utils.ranges import Positive, PositiveInt

SAMPLERS = ("multistep", "fewstep")
# "resolution": the latent is resampled per stage (METHOD.md 1-5); "patch": PPF, the latent stays at full
# resolution and each stage has its own patchify kernel (METHOD.md 9).
KINDS = ("resolution", "patch")
# Patch pyramid RoPE positions: "centre": a coarse token sits at the centre of the stage-0 tokens it covers
# (METHOD.md 9, the default); "grid": the integer positions of the stage's own token grid, as the
# resolution pyramid uses (METHOD.md 3.5), under which stage i at initialisation is exactly the original
# model on the average-pooled latent.
ROPE_POSITIONS = ("centre", "grid")
# The fields that say what a model is (its weights depend on them); the others are sampling defaults.
LAYOUT_FIELDS = (
    "kind",
    "num_stages",
    "factors",
    "clean_ends",
    "wavelet",
    "stage_embedding",
    "rope_positions",
)

Kernel = tuple[int, int, int]


def check_solver(name: str) -> str:
    """`name` if it is a within-stage solver of multi-step sampling, else a one-line InputError."""
    if name not in SOLVERS:
        raise InputError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return name


@dataclass(frozen=True)
class PyramidConfig:
    """How a model must be sampled: its stages, operators, boundaries and default sampler."""

    num_stages: PositiveInt = 3  # S; 1 is plain Wan
    factors: tuple[tuple[int, int, int], ...] | None = None  # (f_t, f_h, f_w) per transition; None: 2s
    clean_ends: tuple[float, ...] | None = None  # sigma_c of stages 1..S-1; None = equal thirds
    wavelet: str = "haar"  # transfer operator: "haar" (avg-pool / nearest) or "db2"
    sampler: str = "multistep"  # "multistep" (Euler + jumps, CFG) or "fewstep" (x0 + re-noise, no CFG)
    default_schedule: str | None = None  # steps per stage, lowest first; None: 20 per stage, 10 at the last
    shift: Positive = 1.0  # multi-step grid shift within each stage
    guidance_scale: float = 5.0  # standard CFG w; 1.0 disables guidance
    kind: str = "resolution"  # "resolution" pyramid or "patch" pyramid (PPF, METHOD.md 9)
    stage_embedding: bool = False  # patch: a learned, zero-initialised per-stage timestep-embedding offset
    rope_positions: str = "centre"  # patch: "centre" (METHOD.md 9) or "grid" (see ROPE_POSITIONS)
    solver: str = "euler"  # within-stage solver of multi-step sampling: a key of sampling.SOLVERS

    def __post_init__(self):
        factors = check_factors(self.factors, self.num_stages)
        object.__setattr__(self, "factors", factors)
        clean = self.clean_ends if self.clean_ends is not None else default_clean_ends(self.num_stages)
        object.__setattr__(self, "clean_ends", tuple(float(c) for c in clean))
        if len(self.clean_ends) != self.num_stages - 1:
            raise InputError(
                f"{self.num_stages} stages need {self.num_stages - 1} clean-end levels, got {self.clean_ends}"
            )
        if self.wavelet not in WAVELETS:
            raise InputError(f"unknown wavelet {self.wavelet!r}; choose one of {', '.join(sorted(WAVELETS))}")
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        check_solver(self.solver)
        if self.kind not in KINDS:
            raise InputError(f"unknown pyramid kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.rope_positions not in ROPE_POSITIONS:
            raise InputError(
                f"unknown rope_positions {self.rope_positions!r}; choose one of {', '.join(ROPE_POSITIONS)}"
            )
        if self.kind != "patch" and (self.stage_embedding or self.rope_positions != "centre"):
            raise InputError("stage_embedding and rope_positions are options of kind 'patch' (PPF) only")
        if self.default_schedule is None:  # 20-20-10 for three stages (METHOD.md 5.4)
            object.__setattr__(self, "default_schedule", "-".join(["20"] * (self.num_stages - 1) + ["10"]))
        parse_schedule(self.default_schedule, self.num_stages)
        if self.kind == "patch":  # the PPF stage intervals (METHOD.md 9)
            try:
                get_ppf_segments(self.clean_ends)
            except ValueError as err:
                raise InputError(str(err)) from None
        self.pyramid()  # validates the boundaries

    def layout(self) -> tuple:
        """The stage layout (LAYOUT_FIELDS): two configs with equal layouts describe the same model."""
        return tuple(getattr(self, name) for name in LAYOUT_FIELDS)

    def with_sampling(self, **sampling) -> PyramidConfig:
        """The same layout with other sampling defaults (sampler, default_schedule, shift, guidance_scale)."""
        unknown = sorted(set(sampling) & set(LAYOUT_FIELDS))
        if unknown:
            raise ValueError(f"with_sampling changes sampling defaults only, not {unknown}")
        return replace(self, **sampling)

    @property
    def default_steps(self) -> tuple[int, ...]:
        """`default_schedule` parsed: steps per stage, lowest resolution first."""
        return parse_schedule(self.default_schedule, self.num_stages)

    def kernels(self, stage: int, patch_size=(1, 2, 2)) -> tuple[Kernel, Kernel]:
        """Patch pyramid: (kernel of frames >= 1, kernel of frame 0) of a stage, k = (Phi_t, p_h Phi_h,
        p_w Phi_w) (METHOD.md 9); frame 0 has no temporal partner, so its kernel is (1, p_h Phi_h,
        p_w Phi_w)."""
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage {stage} out of range 0..{self.num_stages - 1}")
        p_t, p_h, p_w = patch_size
        if p_t != 1:
            raise InputError(
                f"PPF needs a transformer with temporal patch 1 (Wan2.1), got patch {patch_size}"
            )
        phi_t, phi_h, phi_w = cumulative_factors(self.factors, stage)
        return (phi_t, p_h * phi_h, p_w * phi_w), (1, p_h * phi_h, p_w * phi_w)

    def pyramid(self) -> Pyramid:
        return Pyramid.build(self.num_stages, self.factors, self.clean_ends, self.wavelet)

    def to_dict(self) -> dict:
        """JSON-ready (factors and clean ends as lists)."""
        d = asdict(self)
        d["factors"] = [list(f) for f in self.factors]
        d["clean_ends"] = list(self.clean_ends)
        return d

    @classmethod
    def from_dict(cls, d: dict, what: str = "pyramid config") -> PyramidConfig:
        """The inverse of `to_dict`, rejecting unknown keys with a one-line InputError naming `what`."""
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
