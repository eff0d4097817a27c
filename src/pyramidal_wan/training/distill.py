"""Few-step DMD objectives: Wan-DMD baselines, DMD-OT, DMD-PT and DMD-PT* (METHOD.md 6-7).

One iteration of the trainer runs a critic (fake-score) update and, every `critic_ratio` iterations, a
generator (student) update first, each on its own batch (METHOD.md 7.2, two-time-scale schedule):

- student input at a grid point (n, k) of the few-step grid, chosen identically on every rank:
  the cached stage-i latent noised by the student's forward process (default), or a backward simulation
  of the few-step sampler from noise (`student_input: backward`);
- student prediction x_hat = X0_hat_i(x_s, sigma_k, G(x_s)) with gradient (METHOD.md 6.1);
- re-noising of x_hat at tau within the stage, plain (baselines, OT) or pyramidal (PT, PT*);
- generator: L_DMD with g = (P + w_Q Q)(F_T - F_phi) / mean|F_T - v_true|, plus L_teach;
- critic: flow matching of the fake score on detached student samples, re-noised the same way.

| method       | student grid | re-noising | teacher F_T (frozen, CFG)        | w_Q              | student   |
|--------------|--------------|------------|----------------------------------|------------------|-----------|
| dmd          | 0-...-0-N    | plain      | objective.teacher or model.init  | 1                | full      |
| dmd-ot       | pyramidal    | plain      | objective.teacher (multi-res)    | 1                | full      |
| dmd-pt       | pyramidal    | pyramidal  | the student's base, LoRA off     | gamma_1 or 1 / D | LoRA      |
| dmd-pt-star  | pyramidal    | pyramidal  | the student's base, LoRA off     | 1                | LoRA      |
| ppf-dmd      | PPF          | plain      | objective.teacher or model.init  | 1                | full PPF  |

The fake score is full-parameter, initialised from `objective.fake`, else the teacher's weights.
PPF-DMD (METHOD.md 9) runs this same machinery through the stage hooks of `FewStepObjective` (grid, the
process a grid stage follows, the few-step sampler): its latent stays at full resolution on the plain
process, and a PPF stage only picks the student's patch kernel; teacher and fake score may be plain Wan
folders (METHOD.md 9: the unmodified Wan2.1) or PPF folders, which then run with their own stage kernels.
Tensors are stage latents (B, C, T, H, W), prompt embeddings (B, L, D) and the empty prompt (L, D).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pyramidal_wan.errors import InputError
from pyramidal_wan.models.denoiser import CFGVelocity, WanVelocity
from pyramidal_wan.models.loading import load_transformer_for
from pyramidal_wan.models.ppf import load_ppf_or_wan
from pyramidal_wan.pyramid import (
    PLAIN_SEGMENT,
    Pyramid,
    PyramidConfig,
    Segment,
    StageSteps,
    get_fewstep_grid,
    get_ppf_grid,
    is_baseline_schedule,
    randn,
    sample_ppf_few_step,
    sample_pyramid_few_step,
)
from pyramidal_wan.pyramid.distillation import (
    choose_grid_point,
    data_noised_input,
    detail_weight,
    dmd_gradient,
    dmd_loss,
    renoise_plain,
    renoise_pyramidal,
    simulated_input,
)
from pyramidal_wan.pyramid.geometry import parse_schedule
from pyramidal_wan.training.config import Config
from pyramidal_wan.training.networks import student_network
from pyramidal_wan.training.objectives import Objective
from pyramidal_wan.training.ppf import check_ppf_init, objective_ppf_config, ppf_network

STUDENT_INPUTS = ("data", "backward")
PT_FORMS = ("eps", "x0")  # DMD-PT's w_Q: closed-form eps route (gamma_1) or x0 route (1 / D)


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
    init: str, seed: int, precision: str, checkpointing: bool = False, load=load_transformer_for
) -> WanVelocity:
    """A frozen velocity model from a folder or preset (a preset is built from `seed`, like the student);
    `load(init, seed)` builds the transformer (PPF-DMD: `load_ppf_or_wan`)."""
    transformer = cast_frozen(load(init, seed).requires_grad_(False).eval(), precision)
    if checkpointing:  # gradients flow through it into the student's sample (adversarial backbone)
        transformer.enable_gradient_checkpointing()
    return WanVelocity(transformer)


def trainable_network(init: str, seed: int, checkpointing: bool, load=load_transformer_for) -> WanVelocity:
    """A full-parameter velocity model (the fake score), optionally with gradient checkpointing."""
    transformer = load(init, seed)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    return WanVelocity(transformer).train()


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
    from pyramidal_wan.models.presets import PRESETS

    if value is not None and value not in PRESETS and not Path(value).exists():
        raise InputError(
            f"{key} {value} does not exist: give a Wan model folder or a preset ({', '.join(PRESETS)})"
        )


def check_student_pyramid(config: Config) -> None:
    """A pyramidal student folder's saved pyramid (pyramid_config.json) must be the objective's: its stage
    boundaries define the x0 closed form and the stage path the student was fine-tuned on."""
    from pyramidal_wan.models.checkpoint import load_pyramid_config

    folder, cfg = Path(config.model.init), config.objective
    saved = load_pyramid_config(folder) if folder.is_dir() else None
    if saved is None:
        return
    ours = PyramidConfig(num_stages=cfg.num_stages, clean_ends=cfg.clean_ends, wavelet=cfg.wavelet)
    if saved.kind != ours.kind:
        raise InputError(f"{folder} is a {saved.kind} pyramid; these objectives distil resolution pyramids")
    theirs = (saved.num_stages, saved.factors, saved.clean_ends, saved.wavelet)
    if theirs != (ours.num_stages, ours.factors, ours.clean_ends, ours.wavelet):
        factors = [list(f) for f in saved.factors]
        raise InputError(
            f"{folder} holds a pyramid of {saved.num_stages} stages, factors {factors}, clean ends "
            f"{list(saved.clean_ends)}, wavelet {saved.wavelet}; set objective.num_stages, "
            "objective.clean_ends and objective.wavelet to match (only factors (2, 2, 2) are supported here)"
        )


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

    Subclasses set `pyramidal_grid` (a pyramidal schedule, or the plain 0-...-0-N baseline),
    `renoising` ("plain" or "pyramidal") and, where the method cannot run without `objective.teacher`,
    `teacher_required` with `teacher_role`; they add their critic and losses. The stage hooks below (grid,
    student, the process a grid stage follows, the few-step sampler) are the only places that know which
    pyramid the student samples: the patch pyramid (PPFDMD) overrides them, its export config and
    `load_transformer`, and runs every loss unchanged.
    """

    method = ""
    pyramidal_grid = True
    renoising = "plain"
    teacher_required = False
    teacher_role = ""  # what objective.teacher is to this method, for the error when it is missing
    load_transformer = staticmethod(load_transformer_for)  # how teacher and fake-score folders load

    def __init__(self, config: Config):
        cfg = self.cfg = config.objective
        self.check(config)
        self.seed, self.precision = config.train.seed, config.train.precision
        self.critic_ratio = cfg.critic_ratio  # every few-step method trains a critic (check: >= 1)
        self.pyramid = Pyramid.build(cfg.num_stages, None, cfg.clean_ends, cfg.wavelet)
        self.grid = self.get_grid()
        self.nets = {"generator": self.build_student(config)}

    def check(self, config: Config) -> None:
        """Reject settings this method cannot run, before any model is loaded."""
        cfg = config.objective
        steps = parse_schedule(cfg.schedule, cfg.num_stages)
        if self.pyramidal_grid and is_baseline_schedule(steps):
            raise InputError(
                f"{self.method} trains a pyramidal student: use a schedule like 2-2-1, not {cfg.schedule}"
            )
        if not self.pyramidal_grid and not is_baseline_schedule(steps):
            raise InputError(
                f"{self.method} is the plain Wan-DMD baseline: schedule must be 0-...-0-N, not {cfg.schedule}"
            )
        if cfg.student_input not in STUDENT_INPUTS:
            raise InputError(
                f"student_input must be one of {', '.join(STUDENT_INPUTS)}, got {cfg.student_input!r}"
            )
        lo, hi = cfg.tau_range
        if not 0.0 <= lo < hi <= 1.0:
            raise InputError(
                f"tau_range {cfg.tau_range} must satisfy 0 <= low < high <= 1 (default 0.02, 0.98)"
            )
        if cfg.critic_ratio < 1:
            raise InputError(f"{self.method} needs critic_ratio >= 1 (critic updates per generator update)")
        if cfg.noisy_end_signal not in ("upsampled", "projected"):
            raise InputError(f"noisy_end_signal must be upsampled or projected, got {cfg.noisy_end_signal!r}")
        sources = {
            "model.init": config.model.init,
            "objective.teacher": cfg.teacher,
            "objective.fake": cfg.fake,
        }
        for key, value in sources.items():
            check_model_source(key, value)
        self.check_student(config)
        if self.teacher_required and cfg.teacher is None:
            raise InputError(f"{self.method} needs objective.teacher: {self.teacher_role}")

    # Stage hooks: the resolution pyramid here, the patch pyramid in PPFDMD --------------------------------
    def check_student(self, config: Config) -> None:
        """Reject a `model.init` whose saved stages differ from the objective's (JSON only)."""
        if self.pyramidal_grid:
            check_student_pyramid(config)

    def get_grid(self) -> tuple[StageSteps, ...]:
        """The student's few-step grid (METHOD.md 6.2; the 0-...-0-N baseline is one plain segment)."""
        return get_fewstep_grid(self.pyramid, parse_schedule(self.cfg.schedule, self.pyramid.num_stages))

    def build_student(self, config: Config) -> WanVelocity:
        return student_network(config.model, config.train.seed)

    def process_segment(self, n: int) -> Segment:
        """The forward process at grid stage n: its data latent (cache stage), noisy end and x0 closed form.

        The resolution pyramid's stage segment; the grid's own segment (`grid[n].segment`) is the sigma
        interval where the student evaluates and tau is drawn. The two differ only for the patch pyramid.
        """
        return self.grid[n].segment

    def few_step_sampler(self):
        """The few-step sampler of the student's grid, `sampler(model, x, grid=..., ...)` (METHOD.md 6.2)."""
        return functools.partial(sample_pyramid_few_step, pyramid=self.pyramid)

    def export_config(self) -> PyramidConfig:
        """The few-step sampler at the student's schedule, no CFG: `generate` needs no flags."""
        return PyramidConfig(
            num_stages=self.cfg.num_stages,
            clean_ends=tuple(seg.sigma_c for seg in self.pyramid.segments[1:]),
            wavelet=self.cfg.wavelet,
            sampler="fewstep",
            default_schedule=self.cfg.schedule,
            guidance_scale=1.0,
        )

    # One iteration's pieces ----------------------------------------------------------------------------
    def grid_point(self, batch: dict, generator: torch.Generator) -> tuple[int, int]:
        """(n, k): the same stage and step on every rank (stage shapes must match across ranks)."""
        if len(batch["latents"]) != self.pyramid.num_stages:
            raise InputError(
                f"the cache has {len(batch['latents'])} stages but objective.num_stages is "
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
        text = {"encoder_hidden_states": batch["prompt_embeds"]}
        sampler = self.few_step_sampler()
        return simulated_input(self.nets["generator"], noise, sampler, self.grid, n, k, text, generator)

    def predict(self, x: torch.Tensor, n: int, k: int, embeds: torch.Tensor):
        """(velocity, x_hat): the student's velocity and its clean estimate X0_hat (METHOD.md 6.1)."""
        sigma = self.grid[n].sigmas[k]
        velocity = self.nets["generator"](x, sigma, embeds)
        return velocity, self.pyramid.to_x0(x, sigma, velocity, self.process_segment(n))

    @torch.no_grad()
    def detached_student_sample(self, batch: dict, generator) -> tuple[int, torch.Tensor]:
        """(n, x_hat): a grid stage and the student's clean estimate there, without graph (critic updates)."""
        n, k = self.grid_point(batch, generator)
        x_s = self.student_input(batch, n, k, generator)
        _, x_hat = self.predict(x_s, n, k, batch["prompt_embeds"])
        return n, x_hat

    def draw_tau(self, n: int, batch_size: int, like: torch.Tensor, generator):
        """(rho_tau, tau), each (B,): rho_tau ~ U(tau_range) in the stage, tau = sigma_c + rho_tau Delta."""
        lo, hi = self.cfg.tau_range
        rho = (lo + (hi - lo) * torch.rand(batch_size, generator=generator)).to(like)
        return rho, self.grid[n].segment.sigma(rho)

    def renoise(self, n: int, x: torch.Tensor, noise: torch.Tensor, rho, tau):
        """(x_tau, v_true) of a clean latent with this method's process (METHOD.md 7.2, re-noising)."""
        if self.renoising == "pyramidal":
            return renoise_pyramidal(self.pyramid, self.process_segment(n), x, noise, rho)
        return renoise_plain(x, noise, tau)

    def teacher_guidance(self, model) -> CFGVelocity:
        """Standard-form CFG with the objective's scale; the unconditional text is the empty prompt."""
        return CFGVelocity(model, self.cfg.guidance_scale)


def negative_text(batch: dict) -> torch.Tensor:
    """The empty-prompt embedding (L, D) expanded to the batch's prompt embeddings (B, L, D)."""
    return batch["empty_prompt"].to(batch["prompt_embeds"]).expand_as(batch["prompt_embeds"])


# DMD ----------------------------------------------------------------------------------------------------
class DistributionMatching(FewStepObjective):
    """DMD with a fake-score critic (METHOD.md 7.2); subclasses fix the roles of METHOD.md 7.1."""

    teacher_role = "the multi-resolution model (METHOD.md 7.3)"

    def __init__(self, config: Config):
        super().__init__(config)
        cfg, model = self.cfg, config.model
        self.teacher = self.build_teacher(config)
        fake = cfg.fake or cfg.teacher or model.init
        self.nets["critic"] = trainable_network(
            fake, self.seed, model.gradient_checkpointing, self.load_transformer
        )

    def check(self, config: Config) -> None:
        super().check(config)
        cfg = config.objective
        if cfg.student_input == "backward" and cfg.teach_weight > 0:
            raise InputError(
                "student_input=backward has no paired data latent for L_teach: set objective.teach_weight=0 "
                "or use student_input=data (METHOD.md 7.2)"
            )

    def detail_form(self) -> str:
        """The w_Q form of pyramid.distillation.detail_weight: 1 for the plain process (METHOD.md 7.4)."""
        return "one"

    def build_teacher(self, config: Config) -> WanVelocity | None:
        """The frozen teacher F_T; None where the teacher is the LoRA student's base (PT, PT*)."""
        init = config.objective.teacher or config.model.init
        return frozen_network(init, self.seed, self.precision, load=self.load_transformer)

    @torch.no_grad()
    def teacher_velocity(self, x, tau, embeds, negative) -> torch.Tensor:
        """F_T: the guided teacher velocity at (x_tau, 1000 tau)."""
        return self.teacher_guidance(self.teacher)(x, tau, embeds, negative)

    def generator_loss(self, batch: dict, generator: torch.Generator):
        """L_G = L_DMD + teach_weight * mean((x_hat - x0^(i))^2) (METHOD.md 7.2)."""
        n, k = self.grid_point(batch, generator)
        segment, embeds = self.process_segment(n), batch["prompt_embeds"]
        x_s = self.student_input(batch, n, k, generator)
        _, x_hat = self.predict(x_s, n, k, embeds)
        with torch.no_grad():
            rho, tau = self.draw_tau(n, x_hat.shape[0], x_hat, generator)
            x_tau, v_true = self.renoise(n, x_hat.detach(), randn(x_hat.shape, x_hat, generator), rho, tau)
            v_teacher = self.teacher_velocity(x_tau, tau, embeds, negative_text(batch))
            v_fake = self.nets["critic"](x_tau, tau, embeds)
            w_q = detail_weight(segment, tau, self.detail_form())
            grad = dmd_gradient(self.pyramid, segment, v_teacher, v_fake, v_true, w_q)
        loss = dmd_loss(x_hat, grad)
        logs = {
            "loss_dmd": loss.detach(),
            "dmd_grad_abs": grad.abs().mean(),
            "stage": torch.tensor(self.grid[n].segment.stage),
        }
        if self.cfg.teach_weight > 0:
            teach = F.mse_loss(x_hat.float(), self.data_latent(batch, n).float())
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
        pred = self.nets["critic"](x_tau, tau, embeds)
        loss = F.mse_loss(pred.float(), v_true.float())
        return loss, {"loss_fake": loss.detach()}


class WanDMD(DistributionMatching):
    """Wan-DMD 0-0-2 / 0-0-1 (METHOD.md 7.5): plain DMD of the original model at full resolution."""

    method = "dmd"
    pyramidal_grid = False


class DMDOT(DistributionMatching):
    """DMD-OT (METHOD.md 7.3): the multi-resolution original-architecture teacher, plain re-noising at the
    stage's resolution; the student (PyramidalWan) predicts each stage's clean signal."""

    method = "dmd-ot"
    teacher_required = True


class DMDPT(DistributionMatching):
    """DMD-PT (METHOD.md 7.4): PyramidalWan teacher = the LoRA student's base with adapters disabled (no
    extra copy), pyramidal re-noising, detail band weighted by gamma_1 (pt_form eps) or 1 / D (pt_form x0)."""

    method = "dmd-pt"
    renoising = "pyramidal"

    def check(self, config: Config) -> None:
        super().check(config)
        cfg, model = config.objective, config.model
        if cfg.pt_form not in PT_FORMS:
            raise InputError(f"pt_form must be one of {', '.join(PT_FORMS)}, got {cfg.pt_form!r}")
        if model.lora_rank <= 0:
            raise InputError(
                f"{self.method} trains a LoRA student (METHOD.md 7.1): set model.lora_rank, e.g. 64"
            )
        if cfg.teacher is not None and cfg.teacher != model.init:
            raise InputError(
                f"{self.method}'s teacher is the student's base model.init ({model.init}); "
                f"unset objective.teacher (got {cfg.teacher})"
            )

    def detail_form(self) -> str:
        return self.cfg.pt_form

    def build_teacher(self, config: Config) -> None:
        return None  # the teacher is the student's base: nothing is loaded

    @torch.no_grad()
    def teacher_velocity(self, x, tau, embeds, negative) -> torch.Tensor:
        student = self.nets["generator"]
        with adapters_disabled(unwrap(student).transformer):
            return self.teacher_guidance(student)(x, tau, embeds, negative)


class DMDPTStar(DMDPT):
    """DMD-PT* (METHOD.md 7.4): as DMD-PT with w_Q = 1 (Neodragon's pyramidal DMD gradient)."""

    method = "dmd-pt-star"

    def detail_form(self) -> str:
        return "one"


class PPFDMD(DistributionMatching):
    """PPF-DMD (METHOD.md 9): a patch-pyramid student on the PPF few-step grid, DMD with the plain process
    (METHOD.md 7 with w_Q = 1). Inputs x = (1 - sigma) x0 + sigma eps on the full-resolution latent,
    x0_hat = x - sigma F, plain re-noising at tau within the PPF stage's interval; a stage change switches
    only the student's kernel. Teacher and fake score: plain Wan (METHOD.md 9: the unmodified Wan2.1) or PPF
    model folders, run with their own stage kernels."""

    method = "ppf-dmd"
    load_transformer = staticmethod(load_ppf_or_wan)

    def check_student(self, config: Config) -> None:
        check_ppf_init(config.model, objective_ppf_config(config.objective))

    def get_grid(self) -> tuple[StageSteps, ...]:
        ppf_config = objective_ppf_config(self.cfg)
        steps = parse_schedule(self.cfg.schedule, ppf_config.num_stages)
        return get_ppf_grid(ppf_config.clean_ends, steps, "fewstep")

    def build_student(self, config: Config) -> WanVelocity:
        return ppf_network(config.model, objective_ppf_config(config.objective), config.train.seed)

    def process_segment(self, n: int) -> Segment:
        return PLAIN_SEGMENT  # full resolution, plain process, at every PPF stage

    def few_step_sampler(self):
        return sample_ppf_few_step

    def export_config(self) -> PyramidConfig:
        """A PPF folder sampled with the few-step sampler at the student's schedule, no CFG."""
        return objective_ppf_config(self.cfg).pyramid_config(
            sampler="fewstep", default_schedule=self.cfg.schedule, guidance_scale=1.0
        )


METHODS = {"dmd": WanDMD, "dmd-ot": DMDOT, "dmd-pt": DMDPT, "dmd-pt-star": DMDPTStar, "ppf-dmd": PPFDMD}
