"""Few-step DMD (METHOD.md 6-7): Wan-DMD baselines, DMD-OT, DMD-PT, DMD-PT* and PPF-DMD, one objective.

One iteration of the trainer runs a critic (fake-score) update and, every `critic_ratio` iterations, a
generator (student) update first, each on its own batch (METHOD.md 7.2, two-time-scale schedule):

- student input at a grid point (n, k) of the few-step grid, chosen identically on every rank:
  the cached stage-i latent noised by the student's forward process (default), or a backward simulation
  of the few-step sampler from noise (`student_input: backward`);
- student prediction x_hat = X0_hat_i(x_s, sigma_k, G(x_s)) with gradient (METHOD.md 6.1);
- re-noising of x_hat at tau within the stage, plain (baselines, OT, PPF) or pyramidal (PT, PT*);
- generator: L_DMD with g = (P + w_Q Q)(F_T - F_phi) / mean|F_T - v_true|, plus L_teach;
- critic: flow matching of the fake score on detached student samples, re-noised the same way.

| method       | student grid | re-noising | teacher F_T (frozen, CFG)        | w_Q              | student   |
|--------------|--------------|------------|----------------------------------|------------------|-----------|
| dmd          | 0-...-0-N    | plain      | objective.teacher or model.init  | 1                | full      |
| dmd-ot       | pyramidal    | plain      | objective.teacher (multi-res)    | 1                | full      |
| dmd-pt       | pyramidal    | pyramidal  | the student's base, LoRA off     | gamma_1 or 1 / D | LoRA      |
| dmd-pt-star  | pyramidal    | pyramidal  | the student's base, LoRA off     | 1                | LoRA      |
| ppf-dmd      | PPF          | plain      | objective.teacher (Wan2.1)       | 1                | full PPF  |

The methods differ only in data: their `methods.FewStepRoles` (grid, re-noising, teacher, w_Q) and the
`pyramid.distillation.StudentProcess` built from the run's `pyramid:` layout and schedule (plain Wan, the
resolution pyramid or the patch pyramid: grid, segments, x0 formula, re-noising, sampler). The fake score is
full-parameter, initialised from `objective.fake`, else the teacher's weights. Teacher and fake score may be
plain Wan folders or PPF folders, which then run with their own stage kernels. The teachers' CFG uses the
model's negative prompt as unconditional text (`teacher_uncond: negative-prompt`, the default, as the
20-20-10 model samples) or the empty prompt; `run.json` records which one and its text.
Tensors are stage latents (B, C, T, H, W), prompt embeddings (B, L, D) and prompt embeddings (L, D).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from pyramidal_wan.errors import InputError
from pyramidal_wan.models.denoiser import CFGVelocity, WanVelocity
from pyramidal_wan.models.loading import load_transformer_for
from pyramidal_wan.models.ppf import load_ppf_or_wan
from pyramidal_wan.models.presets import PRESETS, get_transformer_config
from pyramidal_wan.models.wan_family import ExpertVelocity, image_mode
from pyramidal_wan.pyramid import PyramidConfig, is_baseline_schedule, parse_schedule, randn
from pyramidal_wan.pyramid.distillation import (
    choose_grid_point,
    data_noised_input,
    detail_weight,
    dmd_gradient,
    dmd_loss,
    simulated_input,
    student_process,
)
from pyramidal_wan.training.networks import (
    original_experts_boundary,
    sets_expand_timesteps,
    student_network,
    transformer_paths,
    velocity_network,
)
from pyramidal_wan.training.objectives import (
    Objective,
    ObjectiveOptions,
    check_noisy_end_signal,
    frame_mse,
    generated_frames,
    image_kwargs,
)
from pyramidal_wan.training.ppf import check_ppf_init, ppf_network
from pyramidal_wan.utils.ranges import NonNegative, PositiveInt, Probability

if TYPE_CHECKING:
    from pyramidal_wan.training.config import Config

STUDENT_INPUTS = ("data", "backward")
PT_FORMS = ("eps", "x0")  # DMD-PT's w_Q: closed-form eps route (gamma_1) or x0 route (1 / D)
# The teachers' unconditional text: the model's negative prompt (as the model samples) or the empty prompt.
TEACHER_UNCONDS = ("negative-prompt", "empty")


# Options ------------------------------------------------------------------------------------------------
@dataclass
class FewStepOptions(ObjectiveOptions):
    """What every few-step method (DMD and adversarial) sets; the student is model.init."""

    schedule: str = "2-2-1"  # the few-step student's steps per stage, lowest resolution first
    teacher: str | None = None  # frozen teacher folder (see the module table for each method's default)
    teacher_uncond: str = "negative-prompt"  # CFG's unconditional text: "negative-prompt" or "empty"
    guidance_scale: float = 5.0  # teacher CFG, standard form uncond + w (cond - uncond)
    critic_ratio: PositiveInt = 5  # critic (fake score / discriminator) updates per generator update
    tau_range: tuple[Probability, Probability] = (
        0.02,
        0.98,
    )  # re-noising rho_tau ~ U(range) in the stage
    student_input: str = "data"  # "data" (noised cached latents) or "backward" (simulated from noise)
    noisy_end_signal: str = "upsampled"  # data-noised inputs' u: "upsampled" (R_up x0^(i+1)) or "projected"


@dataclass
class DMDOptions(FewStepOptions):
    """dmd, dmd-ot, dmd-pt-star, ppf-dmd."""

    fake: str | None = None  # fake-score initialisation; None: the teacher
    teach_weight: NonNegative = 0.01  # L_teach: MSE of the student's x0 to the data latent (data inputs)


@dataclass
class DMDPTOptions(DMDOptions):
    """dmd-pt: DMD-PT's detail-band weight form."""

    pt_form: str = "eps"  # w_Q: "eps" (gamma_1) or "x0" (1 / D)


# Networks ------------------------------------------------------------------------------------------------
def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (accelerate keeps the wrapped module object itself)."""
    return getattr(net, "module", net)


def cast_frozen(transformer: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Store a frozen transformer in bf16 / fp16 under mixed precision, keeping the modules diffusers keeps in
    float32 (`_keep_in_fp32_modules`: RoPE, time embedder, modulation tables, norms); halves its memory."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return transformer
    keep = type(transformer)._keep_in_fp32_modules or []
    for name, param in transformer.named_parameters():
        if not any(k in name for k in keep):
            param.data = param.data.to(dtype)
    return transformer


def frozen_network(
    init: str,
    seed: int,
    precision: str,
    checkpointing: bool = False,
    load=load_transformer_for,
    pipeline: str | None = None,
) -> WanVelocity | ExpertVelocity:
    """A frozen velocity model from a folder or preset (a preset is built from `seed`, like the student);
    `load(init, seed)` builds the transformer (PPF-DMD: `load_ppf_or_wan`); a two-expert folder gives both
    experts (an original-layout one switched at `pipeline`'s boundary_ratio)."""
    net = velocity_network(init, seed, load, pipeline).requires_grad_(False).eval()
    for path in transformer_paths(net).values():
        transformer = cast_frozen(net.get_submodule(path), precision)
        if checkpointing:  # gradients flow through it into the student's sample (adversarial backbone)
            transformer.enable_gradient_checkpointing()
    return net


def trainable_network(
    init: str, seed: int, checkpointing: bool, load=load_transformer_for, pipeline: str | None = None
) -> WanVelocity | ExpertVelocity:
    """A full-parameter velocity model (the fake score; both experts of a two-expert folder, an
    original-layout one switched at `pipeline`'s boundary_ratio), optionally with gradient checkpointing."""
    net = velocity_network(init, seed, load, pipeline)
    if checkpointing:
        for path in transformer_paths(net).values():
            net.get_submodule(path).enable_gradient_checkpointing()
    return net.train()


@contextmanager
def adapters_disabled(transformer):
    """Run a peft-LoRA transformer as its base model (DMD-PT's teacher; METHOD.md 7.2, LoRA)."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def check_model_source(key: str, value: str | None) -> None:
    """A model setting must name a preset or an existing path (checked before any model is loaded)."""
    if value is not None and value not in PRESETS and not Path(value).exists():
        raise InputError(
            f"{key} {value} does not exist: give a Wan model folder or a preset ({', '.join(PRESETS)})"
        )


def check_student_pyramid(init: str, pyramid: PyramidConfig) -> None:
    """A pyramidal student folder's saved pyramid (pyramid_config.json) must be the run's: its stage
    boundaries define the x0 closed form and the stage path the student was fine-tuned on."""
    from pyramidal_wan.models.checkpoint import load_pyramid_config

    folder = Path(init)
    saved = load_pyramid_config(folder) if folder.is_dir() else None
    if saved is None:
        return
    if saved.kind != pyramid.kind:
        raise InputError(f"{folder} is a {saved.kind} pyramid; set pyramid.kind={saved.kind} to distil it")
    if saved.layout() != pyramid.layout():
        factors = [list(f) for f in saved.factors]
        raise InputError(
            f"{folder} holds a pyramid of {saved.num_stages} stages, factors {factors}, clean ends "
            f"{list(saved.clean_ends)}, wavelet {saved.wavelet}; set pyramid.num_stages, pyramid.factors, "
            "pyramid.clean_ends and pyramid.wavelet to match"
        )


def check_same_conditioning(
    sources: dict[str, str | None], pipeline: str | None = None, first_frame: bool = False
) -> None:
    """Student, teacher and fake score take the same conditioning image input (none, CLIP or channels):
    an image-to-video student is distilled from an image-to-video teacher (reads JSON files only; a missing
    folder is `check_model_source`'s error). With `first_frame` (clean-first-frame image-to-video training,
    `data.image_to_video`) each must also run with expand_timesteps: its own model_index.json's, else that of
    `pipeline` (model.pipeline)."""
    given = {key: v for key, v in sources.items() if v is not None and (v in PRESETS or Path(v).exists())}

    def expands(source: str) -> bool:
        own = source not in PRESETS and Path(source, "model_index.json").is_file()
        return first_frame and sets_expand_timesteps(source if own else pipeline)

    modes = {key: image_mode(get_transformer_config(v), expands(v)) for key, v in given.items()}
    if len(set(modes.values())) > 1:
        described = ", ".join(f"{key} {mode or 'text-to-video'}" for key, mode in modes.items())
        raise InputError(f"the models' image conditioning differs ({described}); give models of one kind")


def synchronised(values: list[int], device) -> list[int]:
    """Rank 0's integers on every rank (the stage and step choice of METHOD.md 7.2, step 1)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    shared = torch.tensor(values, dtype=torch.long, device=device)
    dist.broadcast(shared, src=0)
    return [int(v) for v in shared.tolist()]


# The shared few-step machinery --------------------------------------------------------------------------
class FewStepObjective(Objective):
    """A few-step student on a grid (METHOD.md 6.2): input construction, x0 prediction and re-noising.

    `self.process` (a `StudentProcess`) is the only thing that knows which pyramid the student samples;
    `self.roles` (the method's `FewStepRoles`) the only thing that knows which method runs. DMD and the
    adversarial objective add their critic and losses on top.
    """

    def __init__(self, config: Config, method):
        cfg = self.cfg = config.objective
        self.method, self.roles = method.name, method.roles
        self.check(config, method)
        self.seed, self.precision = config.train.seed, config.train.precision
        self.critic_ratio = cfg.critic_ratio  # every few-step method trains a critic (check: >= 1)
        self.pyramid_config = config.pyramid
        steps = parse_schedule(cfg.schedule, config.pyramid.num_stages)
        self.process = student_process(config.pyramid, steps, self.roles.renoising == "pyramidal")
        self.pyramid, self.grid = self.process.pyramid, self.process.grid
        patch = config.pyramid.kind == "patch"
        self.takes_image_conditions = not patch  # a patch pyramid (PPF) is text-to-video only
        # Teacher and fake-score folders: a PPF folder loads with its stage kernels, anything else plainly.
        self.load_transformer = load_ppf_or_wan if patch else load_transformer_for
        if patch:
            student = ppf_network(config.model, config.pyramid, config.train.seed)
        else:
            student = student_network(config.model, config.train.seed)
        self.nets = {"generator": student}

    @classmethod
    def check(cls, config: Config, method) -> None:
        """Reject settings `method` cannot run, before any model is loaded (reads JSON files only)."""
        cfg, roles, name = config.objective, method.roles, method.name
        steps = parse_schedule(cfg.schedule, config.pyramid.num_stages)
        if roles.grid == "pyramidal" and is_baseline_schedule(steps):
            raise InputError(
                f"{name} trains a pyramidal student: use a schedule like 2-2-1, not {cfg.schedule}"
            )
        if roles.grid == "baseline" and not is_baseline_schedule(steps):
            raise InputError(
                f"{name} is the plain Wan-DMD baseline: schedule must be 0-...-0-N, not {cfg.schedule}"
            )
        if cfg.student_input not in STUDENT_INPUTS:
            raise InputError(
                f"student_input must be one of {', '.join(STUDENT_INPUTS)}, got {cfg.student_input!r}"
            )
        if cfg.teacher_uncond not in TEACHER_UNCONDS:
            raise InputError(
                f"teacher_uncond must be one of {', '.join(TEACHER_UNCONDS)}, got {cfg.teacher_uncond!r}"
            )
        lo, hi = cfg.tau_range
        if not 0.0 <= lo < hi <= 1.0:
            raise InputError(
                f"tau_range {cfg.tau_range} must satisfy 0 <= low < high <= 1 (default 0.02, 0.98)"
            )
        if cfg.critic_ratio < 1:
            raise InputError(f"{name} needs critic_ratio >= 1 (critic updates per generator update)")
        check_noisy_end_signal(cfg.noisy_end_signal)
        sources = {"model.init": config.model.init, "objective.teacher": cfg.teacher}
        if hasattr(cfg, "fake"):
            sources["objective.fake"] = cfg.fake
        for key, value in sources.items():
            check_model_source(key, value)
            if value is not None:  # an original-layout A14B release takes its boundary from model.pipeline
                original_experts_boundary(value, config.model.pipeline, key)
        if config.pyramid.kind == "patch":
            check_ppf_init(config.model, config.pyramid)
        else:
            check_same_conditioning(sources, config.model.pipeline, config.data.image_to_video > 0)
            if roles.grid == "pyramidal":
                check_student_pyramid(config.model.init, config.pyramid)
        if roles.teacher == "required" and cfg.teacher is None:
            raise InputError(f"{name} needs objective.teacher: {roles.teacher_role}")
        if roles.teacher == "lora-base":
            if config.model.lora_rank <= 0:
                raise InputError(
                    f"{name} trains a LoRA student (METHOD.md 7.1): set model.lora_rank, e.g. 64"
                )
            if cfg.teacher is not None and cfg.teacher != config.model.init:
                raise InputError(
                    f"{name}'s teacher is the student's base model.init ({config.model.init}); "
                    f"unset objective.teacher (got {cfg.teacher})"
                )

    def export_config(self) -> PyramidConfig:
        """The run's layout, sampled with the few-step sampler at the student's schedule, no CFG: `generate`
        needs no flags."""
        return self.pyramid_config.with_sampling(
            sampler="fewstep", default_schedule=self.cfg.schedule, guidance_scale=1.0
        )

    def run_record(self, data) -> dict:
        """The teachers' unconditional text; a cache without the model's negative prompt raises."""
        if self.cfg.teacher_uncond == "empty":
            return {"teacher_uncond": "empty", "teacher_uncond_text": ""}
        if data.negative_prompt is None:
            raise InputError(
                f"the cache {data.folder} has no negative-prompt embedding (made by an older prepare-data): "
                "rerun `pyramidal-wan prepare-data` with the same arguments to add it, or set "
                "objective.teacher_uncond=empty"
            )
        return {"teacher_uncond": "negative-prompt", "teacher_uncond_text": data.negative_prompt_text}

    # One iteration's pieces ----------------------------------------------------------------------------
    def grid_point(self, batch: dict, generator: torch.Generator) -> tuple[int, int]:
        """(n, k): the same stage and step on every rank (stage shapes must match across ranks)."""
        if len(batch["latents"]) != self.pyramid.num_stages:
            raise InputError(
                f"the cache has {len(batch['latents'])} stages but pyramid.num_stages is "
                f"{self.pyramid.num_stages}; prepare the cache with --stages {self.pyramid.num_stages}"
            )
        n, k = synchronised(list(choose_grid_point(self.grid, generator)), batch["latents"][0].device)
        return n, k

    def noisy_end(self, batch: dict, stage: int) -> torch.Tensor | None:
        """u^(i) of the data-noised input: R_up x0^(i+1) (or P x0^(i)); None at the lowest stage."""
        if stage == self.pyramid.num_stages - 1:
            return None
        if self.cfg.noisy_end_signal == "projected":
            return self.pyramid.project(batch["latents"][stage], stage)
        return self.pyramid.up(batch["latents"][stage + 1], stage)

    def process_segment(self, n: int):
        """The forward-process segment at grid stage n (see `StudentProcess`)."""
        return self.process.segments[n]

    def data_latent(self, batch: dict, n: int) -> torch.Tensor:
        """x0 of grid stage n: the cached latent of its process's stage (B, C, T, H, W)."""
        return batch["latents"][self.process_segment(n).stage]

    def student_input(self, batch: dict, n: int, k: int, generator) -> torch.Tensor:
        """x_s at grid point (n, k) (METHOD.md 7.2, step 2), (B, C, T, H, W) at the stage's resolution."""
        segment, sigma = self.process_segment(n), self.grid[n].sigmas[k]
        x0 = self.data_latent(batch, n)
        if self.cfg.student_input == "data":
            u = None if segment.sigma_n == 1.0 else self.noisy_end(batch, segment.stage)
            return data_noised_input(self.pyramid, segment, x0, u, randn(x0.shape, x0, generator), sigma)
        start = self.data_latent(batch, 0)
        noise = randn(start.shape, start, generator)
        conditions = {"encoder_hidden_states": batch["prompt_embeds"], **image_kwargs(batch)}
        sampler = self.process.sampler
        return simulated_input(self.nets["generator"], noise, sampler, self.grid, n, k, conditions, generator)

    def predict(self, x: torch.Tensor, n: int, k: int, embeds: torch.Tensor, **image):
        """(velocity, x_hat): the student's velocity and its clean estimate X0_hat (METHOD.md 6.1); `image`:
        an image-to-video batch's `image_kwargs`."""
        sigma = self.grid[n].sigmas[k]
        velocity = self.nets["generator"](x, sigma, embeds, **image)
        return velocity, self.process.to_x0(x, sigma, velocity, n)

    @torch.no_grad()
    def detached_student_sample(self, batch: dict, generator) -> tuple[int, torch.Tensor]:
        """(n, x_hat): a grid stage and the student's clean estimate there, without graph (critic updates)."""
        n, k = self.grid_point(batch, generator)
        x_s = self.student_input(batch, n, k, generator)
        _, x_hat = self.predict(x_s, n, k, batch["prompt_embeds"], **image_kwargs(batch))
        return n, x_hat

    def draw_tau(self, n: int, batch_size: int, like: torch.Tensor, generator):
        """(rho_tau, tau), each (B,): rho_tau ~ U(tau_range) in the stage, tau = sigma_c + rho_tau Delta."""
        lo, hi = self.cfg.tau_range
        rho = (lo + (hi - lo) * torch.rand(batch_size, generator=generator)).to(like)
        return rho, self.grid[n].segment.sigma(rho)

    def renoise(self, n: int, x: torch.Tensor, noise: torch.Tensor, rho, tau):
        """(x_tau, v_true) of a clean latent with this method's process (METHOD.md 7.2, re-noising)."""
        return self.process.renoise(n, x, noise, rho, tau)

    def teacher_guidance(self, model) -> CFGVelocity:
        """Standard-form CFG with the objective's scale (unconditional text: `unconditional_text`)."""
        return CFGVelocity(model, self.cfg.guidance_scale)

    def unconditional_text(self, batch: dict) -> torch.Tensor:
        """The teachers' unconditional text (L, D), expanded to the batch's prompt embeddings (B, L, D): the
        model's negative prompt, or the empty prompt with `teacher_uncond: empty`."""
        key = "empty_prompt" if self.cfg.teacher_uncond == "empty" else "negative_prompt"
        return batch[key].to(batch["prompt_embeds"]).expand_as(batch["prompt_embeds"])


# DMD ----------------------------------------------------------------------------------------------------
class DistributionMatching(FewStepObjective):
    """DMD with a fake-score critic (METHOD.md 7.2); the method's roles fix those of METHOD.md 7.1.

    A clean-first-frame model's image-to-video rows: every network call gets the stage's clean first frame
    at timestep 0 (`image_kwargs`), and the given frame is left out of the DMD gradient, its normaliser,
    L_teach and the fake score's loss: the model's output there is never used in sampling.
    """

    trains_clean_first_frame = True

    def __init__(self, config: Config, method):
        super().__init__(config, method)
        cfg, model = self.cfg, config.model
        # The frozen teacher F_T; None where the teacher is the LoRA student's base (PT, PT*: no copy).
        self.teacher = None
        if self.roles.teacher != "lora-base":
            teacher = cfg.teacher or model.init
            self.teacher = frozen_network(
                teacher, self.seed, self.precision, load=self.load_transformer, pipeline=model.pipeline
            )
        fake = cfg.fake or cfg.teacher or model.init
        self.nets["critic"] = trainable_network(
            fake, self.seed, model.gradient_checkpointing, self.load_transformer, model.pipeline
        )

    @classmethod
    def check(cls, config: Config, method) -> None:
        super().check(config, method)
        cfg = config.objective
        if cfg.student_input == "backward" and cfg.teach_weight > 0:
            raise InputError(
                "student_input=backward has no paired data latent for L_teach: set objective.teach_weight=0 "
                "or use student_input=data (METHOD.md 7.2)"
            )
        if method.roles.detail == "pt_form" and cfg.pt_form not in PT_FORMS:
            raise InputError(f"pt_form must be one of {', '.join(PT_FORMS)}, got {cfg.pt_form!r}")

    def detail_form(self) -> str:
        """The w_Q form of pyramid.distillation.detail_weight: 1, or DMD-PT's `pt_form` (METHOD.md 7.4)."""
        return self.cfg.pt_form if self.roles.detail == "pt_form" else "one"

    @torch.no_grad()
    def teacher_velocity(self, x, tau, embeds, negative, **image) -> torch.Tensor:
        """F_T: the guided teacher velocity at (x_tau, 1000 tau)."""
        if self.teacher is not None:
            return self.teacher_guidance(self.teacher)(x, tau, embeds, negative, **image)
        student = self.nets["generator"]
        with adapters_disabled(unwrap(student).transformer):
            return self.teacher_guidance(student)(x, tau, embeds, negative, **image)

    def generator_loss(self, batch: dict, generator: torch.Generator):
        """L_G = L_DMD + teach_weight * mean((x_hat - x0^(i))^2) (METHOD.md 7.2)."""
        n, k = self.grid_point(batch, generator)
        segment, embeds, image = self.process_segment(n), batch["prompt_embeds"], image_kwargs(batch)
        x_s = self.student_input(batch, n, k, generator)
        _, x_hat = self.predict(x_s, n, k, embeds, **image)
        frames = generated_frames(batch, x_hat)  # None, or 0 on image-to-video rows' given first frame
        with torch.no_grad():
            rho, tau = self.draw_tau(n, x_hat.shape[0], x_hat, generator)
            x_tau, v_true = self.renoise(n, x_hat.detach(), randn(x_hat.shape, x_hat, generator), rho, tau)
            v_teacher = self.teacher_velocity(x_tau, tau, embeds, self.unconditional_text(batch), **image)
            v_fake = self.nets["critic"](x_tau, tau, embeds, **image)
            w_q = detail_weight(segment, tau, self.detail_form())
            grad = dmd_gradient(self.pyramid, segment, v_teacher, v_fake, v_true, w_q, frames)
        loss = dmd_loss(x_hat, grad)
        logs = {
            "loss_dmd": loss.detach(),
            "dmd_grad_abs": grad.abs().mean(),
            "stage": torch.tensor(self.grid[n].segment.stage),
        }
        if self.cfg.teach_weight > 0:
            teach = frame_mse(x_hat, self.data_latent(batch, n), frames)
            logs["loss_teach"] = teach.detach()
            loss = loss + self.cfg.teach_weight * teach
        return loss, logs

    def critic_loss(self, batch: dict, generator: torch.Generator):
        """L_fm = mean((F_phi(x_tau, 1000 tau) - v_true)^2) on a detached student sample (METHOD.md 7.2)."""
        n, x_hat = self.detached_student_sample(batch, generator)
        embeds = batch["prompt_embeds"]
        with torch.no_grad():
            rho, tau = self.draw_tau(n, x_hat.shape[0], x_hat, generator)
            x_tau, v_true = self.renoise(n, x_hat, randn(x_hat.shape, x_hat, generator), rho, tau)
        pred = self.nets["critic"](x_tau, tau, embeds, **image_kwargs(batch))
        loss = frame_mse(pred, v_true, generated_frames(batch, pred))
        return loss, {"loss_fake": loss.detach()}
