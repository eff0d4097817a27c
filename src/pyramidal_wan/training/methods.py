"""Every training method in one place: the one list the CLI, the config loader and the tests read.

A `Method` names its objective class, its options dataclass (the keys its `objective:` section may hold),
the pyramid kind it trains and, for the few-step methods, the roles of METHOD.md 7.1 / 8 that set it apart
(`FewStepRoles`): which grid the student walks, how a clean estimate is re-noised, where the teacher comes
from and the DMD detail-band weight. Objectives are plain classes built as `method.objective(config,
method)`; nothing here is imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyramidal_wan.errors import InputError
from pyramidal_wan.training.adversarial import AdversarialDistillation, AdversarialOptions
from pyramidal_wan.training.distill import DistributionMatching, DMDOptions, DMDPTOptions
from pyramidal_wan.training.networks import exported_image_mode
from pyramidal_wan.training.objectives import (
    FlowMatching,
    FlowMatchingOptions,
    MultiresOptions,
    PyramidalFlowMatching,
    PyramidalOptions,
)
from pyramidal_wan.training.ppf import PPFFlowMatching, PPFFlowMatchingOptions

if TYPE_CHECKING:
    from pyramidal_wan.training.config import Config


@dataclass(frozen=True)
class FewStepRoles:
    """What sets a few-step method apart (METHOD.md 7.1, 8), as data read by the DMD and adversarial code."""

    grid: str = "pyramidal"  # the student's schedule: "pyramidal" (2-2-1) or the plain "baseline" 0-...-0-N
    renoising: str = "plain"  # "plain" at tau, or "pyramidal" with noisy-end content P(x) (METHOD.md 7.2)
    # "folder": objective.teacher, else model.init; "required": objective.teacher must be given;
    # "lora-base": the LoRA student's base with its adapters disabled (no copy is loaded)
    teacher: str = "folder"
    teacher_role: str = ""  # what objective.teacher is to the method (the error when it is missing)
    detail: str = "one"  # DMD's w_Q: "one", or "pt_form" (DMD-PT's option, METHOD.md 7.4)


@dataclass(frozen=True)
class Method:
    """One training method: its objective class, options, pyramid kind and (few-step) roles."""

    name: str
    objective: type
    options: type
    summary: str
    kind: str = "resolution"  # the `pyramid.kind` it trains: "resolution" or "patch" (PPF)
    roles: FewStepRoles | None = None  # None: a flow-matching objective (no critic, no teacher)

    @property
    def few_step(self) -> bool:
        return self.roles is not None


MULTIRES_TEACHER = "the multi-resolution original-architecture model (METHOD.md 7.3)"
METHODS = {
    m.name: m
    for m in (
        Method("flow-matching", FlowMatching, FlowMatchingOptions, "plain flow matching (pretraining)"),
        Method("multires-fm", FlowMatching, MultiresOptions, "flow matching at every stage resolution"),
        Method("pyramidal", PyramidalFlowMatching, PyramidalOptions, "pyramidal fine-tune (METHOD.md 4)"),
        Method("ppf-fm", PPFFlowMatching, PPFFlowMatchingOptions, "PPF fine-tune (METHOD.md 9)", "patch"),
        Method("dmd", DistributionMatching, DMDOptions, "Wan-DMD baseline", roles=FewStepRoles("baseline")),
        Method(
            "dmd-ot",
            DistributionMatching,
            DMDOptions,
            "DMD-OT (METHOD.md 7.3)",
            roles=FewStepRoles(teacher="required", teacher_role=MULTIRES_TEACHER),
        ),
        Method(
            "dmd-pt",
            DistributionMatching,
            DMDPTOptions,
            "DMD-PT (METHOD.md 7.4)",
            roles=FewStepRoles(renoising="pyramidal", teacher="lora-base", detail="pt_form"),
        ),
        Method(
            "dmd-pt-star",
            DistributionMatching,
            DMDOptions,
            "DMD-PT* (METHOD.md 7.4)",
            roles=FewStepRoles(renoising="pyramidal", teacher="lora-base"),
        ),
        Method(
            "ppf-dmd",
            DistributionMatching,
            DMDOptions,
            "PPF-DMD (METHOD.md 9)",
            "patch",
            FewStepRoles(teacher="required", teacher_role="the original Wan model (METHOD.md 9: Wan2.1)"),
        ),
        Method(
            "adv-o",
            AdversarialDistillation,
            AdversarialOptions,
            "Adv-O (METHOD.md 8)",
            roles=FewStepRoles(
                teacher="required",
                teacher_role="the multi-resolution original-architecture backbone (METHOD.md 8)",
            ),
        ),
        Method(
            "adv-p",
            AdversarialDistillation,
            AdversarialOptions,
            "Adv-P (METHOD.md 8)",
            roles=FewStepRoles(renoising="pyramidal"),
        ),
    )
}
FEW_STEP_METHODS = tuple(name for name, m in METHODS.items() if m.few_step)


def build_objective(config: Config):
    """The objective of `config.objective.name` on the run's `pyramid:` layout (its kind must fit)."""
    method = METHODS[config.objective.name]  # load_config accepts registered names only
    if config.pyramid.kind != method.kind:
        raise InputError(
            f"{method.name} trains a {method.kind} pyramid but pyramid.kind is {config.pyramid.kind}; set "
            f"pyramid.kind={method.kind}"
        )
    return method.objective(config, method)


def check_image_to_video(config: Config, data) -> None:
    """`data.image_to_video` trains a clean-first-frame model (Wan2.2-TI2V-5B) image-to-video: the exported
    model must be one (model_index.json's expand_timesteps), the method must feed the first frame
    (`trains_clean_first_frame`, a resolution pyramid), and the cache's stage latents must begin with the
    image latents the pipeline conditions each stage on, which pixel-space stages do and latent-space ones
    (R_down of the full latent) do not. One-line errors, from JSON and the manifest, before any weights
    load."""
    share = config.data.image_to_video
    if share == 0:
        return
    base = config.model.pipeline or config.model.init
    mode = exported_image_mode(config.model)
    if mode in ("clip", "channels"):
        raise InputError(
            f"data.image_to_video is for clean-first-frame models (Wan2.2-TI2V-5B); {base} is an "
            f"image-to-video model (image conditioning {mode}) that always trains on its image: unset "
            "data.image_to_video"
        )
    if mode != "first_frame":
        raise InputError(
            f"data.image_to_video={share} trains a clean-first-frame model (Wan2.2-TI2V-5B) image-to-video, "
            f"but {base} has no model_index.json setting expand_timesteps: set model.pipeline to the TI2V-5B "
            "diffusers folder (the export copies it), or set data.image_to_video=0"
        )
    method = METHODS[config.objective.name]
    if method.kind != "resolution" or not method.objective.trains_clean_first_frame:
        able = ", ".join(
            name
            for name, m in METHODS.items()
            if m.kind == "resolution" and m.objective.trains_clean_first_frame
        )
        raise InputError(
            f"{method.name} does not train clean-first-frame image-to-video; use one of {able}, or set "
            "data.image_to_video=0"
        )
    construction = data.manifest["settings"]["construction"]
    if construction != "pixel":
        raise InputError(
            f"data.image_to_video needs a pixel-construction cache, whose stage latents begin with the stage "
            f"images the pipeline conditions on; {data.folder} is {construction}-construction: prepare one "
            "with --construction pixel"
        )
