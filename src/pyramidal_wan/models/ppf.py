"""Patch pyramid (PPF, METHOD.md 9): one Wan transformer whose patchify kernel grows with the noise level.

The latent stays at full resolution and follows the plain flow-matching path. What changes per stage is
the patch embedding and the unpatchify projection: stage i patchifies frames >= 1 with the kernel
(Phi_t, 2 Phi_h, 2 Phi_w) and latent frame 0 (causal: it has no temporal partner) with (1, 2 Phi_h,
2 Phi_w), so its token grid, and hence its FLOPs, equal stage i of the resolution pyramid. The transformer
blocks, the output norm and the modulation tables are shared. Stage 0 uses the transformer's own patch
layers, so it *is* the original model.

`PPFTransformer` is a drop-in replacement for `WanTransformer3DModel` (same `forward` arguments), so
`WanVelocity(PPFTransformer(...))` is a velocity model `model(x, sigma, encoder_hidden_states)` that picks
each sample's stage kernel from its sigma; training objectives and samplers need nothing else.

A PPF model folder is a diffusers transformer folder (config.json + weights of the base transformer, which
`WanTransformer3DModel` and `WanPipeline` still load as a plain model) plus `ppf_layers.safetensors` (the
stage >= 1 patch layers and the optional stage embedding) and `pyramid_config.json` (its `PyramidConfig`,
kind "patch"; folders saved before have `ppf_config.json`, read as the same layout).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils import apply_lora_scale
from safetensors.torch import save_file
from torch import nn

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.checkpoint import PYRAMID_CONFIG_NAME
from pyramidal_wan.models.denoiser import TIMESTEP_SCALE, CFGVelocity
from pyramidal_wan.models.loading import (
    load_diffusers_transformer,
    load_safetensors,
    load_transformer_for,
)
from pyramidal_wan.models.presets import read_config_json
from pyramidal_wan.pyramid.config import Kernel, PyramidConfig
from pyramidal_wan.pyramid.sampling import ppf_stage_of
from pyramidal_wan.utils.io import atomic_path, write_json

# The PPF transformer folder's stage layout: a `PyramidConfig` of kind "patch", as the pipeline folder's.
PPF_CONFIG_NAME = PYRAMID_CONFIG_NAME
LEGACY_PPF_CONFIG_NAME = "ppf_config.json"  # folders saved before PyramidConfig described PPF too
PPF_LAYERS_NAME = "ppf_layers.safetensors"
# WanTransformer3DModel builds WanRotaryPosEmbed without a theta argument, so every Wan model uses 1e4.
ROPE_THETA = 10000.0


# Geometry ----------------------------------------------------------------------------------------------


def ppf_token_grids(latent_thw, kernels: tuple[Kernel, Kernel]) -> tuple[Kernel, Kernel]:
    """Token grids (frame 0, frames >= 1) of a (T, H, W) latent under a stage's kernels.

    Raises InputError when the latent does not divide (METHOD.md 1.4: the pyramid's divisibility rules,
    applied to the patch kernels). Frames >= 1 may be absent (T = 1) only when k_t = 1.
    """
    (k_t, k_h, k_w), _ = kernels
    t, h, w = (int(s) for s in latent_thw)
    if h % k_h or w % k_w:
        raise InputError(f"latent {h}x{w} is not divisible by the PPF kernel {k_h}x{k_w}; change the size")
    if (t - 1) % k_t or (k_t > 1 and t == 1):
        raise InputError(
            f"{t} latent frames: frames >= 1 ({t - 1}) must be a positive multiple of the PPF kernel's {k_t}"
        )
    return (1, h // k_h, w // k_w), ((t - 1) // k_t, h // k_h, w // k_w)


def ppf_num_tokens(latent_thw, kernels: tuple[Kernel, Kernel]) -> int:
    """Transformer tokens of one PPF stage forward (equal to the resolution pyramid's stage, METHOD.md 9)."""
    return sum(math.prod(g) for g in ppf_token_grids(latent_thw, kernels))


def _axis_positions(count: int, reps: int, start: float, mode: str, device) -> torch.Tensor:
    """1-D positions of `count` coarse tokens that each cover `reps` stage-0 tokens, the first at `start`.

    centre: start + j r + (r - 1) / 2 (METHOD.md 9); grid: start + j, the coarse grid's own index.
    """
    j = torch.arange(count, dtype=torch.float64, device=device)
    return start + j if mode == "grid" else start + j * reps + (reps - 1) / 2


def ppf_positions(latent_thw, kernels: tuple[Kernel, Kernel], patch_size, mode="centre", device=None):
    """RoPE positions (N, 3) = (t, h, w) of a stage's tokens in token order: frame 0's, then frames >= 1.

    Stage-0 token units: frame 0 at t = 0, coarse frame j >= 1 at 1 + k_t (j - 1) + (k_t - 1) / 2, height
    j r + (r - 1) / 2 with r = k_h / p_h (METHOD.md 9). Float64, so the integer positions of stage 0 are
    exact and match diffusers' integer-indexed RoPE tables bit for bit.
    """
    (k_t, k_h, k_w), _ = kernels
    first, rest = ppf_token_grids(latent_thw, kernels)
    r_h, r_w = k_h // patch_size[1], k_w // patch_size[2]
    h = _axis_positions(first[1], r_h, 0.0, mode, device)
    w = _axis_positions(first[2], r_w, 0.0, mode, device)
    parts = []
    for t in (
        torch.zeros(1, dtype=torch.float64, device=device),
        _axis_positions(rest[0], k_t, 1.0, mode, device),
    ):
        grid = torch.meshgrid(t, h, w, indexing="ij")  # t-major, then h, then w: the token order
        parts.append(torch.stack(grid, dim=-1).reshape(-1, 3))
    return torch.cat(parts)  # (N, 3)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float = ROPE_THETA):
    """cos / sin tables (1, N, 1, head_dim) of Wan's 3-D RoPE at arbitrary (fractional) positions (N, 3).

    Same layout as diffusers' `WanRotaryPosEmbed`: per head h_dim = w_dim = 2 (head_dim // 6) channels for
    height and width and the rest (44 / 42 / 42 for 128) for time, frequencies theta^(-2k/dim) in float64,
    each angle's cos and sin repeated twice (interleaved pairs), cast to float32 at the end.
    """
    h_dim = w_dim = 2 * (head_dim // 6)
    cos, sin = [], []
    for axis, dim in enumerate((head_dim - h_dim - w_dim, h_dim, w_dim)):
        exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
        angles = torch.outer(positions[:, axis].to(torch.float64), 1.0 / (theta**exponents))  # (N, dim/2)
        cos.append(angles.cos().repeat_interleave(2, dim=1).float())
        sin.append(angles.sin().repeat_interleave(2, dim=1).float())
    n = positions.shape[0]
    return torch.cat(cos, dim=1).reshape(1, n, 1, head_dim), torch.cat(sin, dim=1).reshape(1, n, 1, head_dim)


# Initialisation ----------------------------------------------------------------------------------------


@torch.no_grad()
def expand_patch_embedding(conv: nn.Conv3d, kernel: Kernel) -> nn.Conv3d:
    """Patchify by averaging (METHOD.md 9): the Kronecker expansion of the original kernel over `kernel`.

    W[o, c, a, b, e] = W0[o, c, a // r_t, b // r_h, e // r_w] / (r_t r_h r_w), bias copied, so the new
    conv equals "average-pool by r, then the original conv".
    """
    reps = [k // p for k, p in zip(kernel, conv.kernel_size)]
    w = conv.weight
    new = nn.Conv3d(
        conv.in_channels, conv.out_channels, kernel, stride=kernel, device=w.device, dtype=w.dtype
    )
    for axis, r in zip((2, 3, 4), reps):
        w = w.repeat_interleave(r, dim=axis)
    new.weight.copy_(w / math.prod(reps))
    new.bias.copy_(conv.bias)
    return new


@torch.no_grad()
def expand_proj_out(linear: nn.Linear, patch_size, kernel: Kernel) -> nn.Linear:
    """Unpatchify by copying (METHOD.md 9): output (p_t, p_h, p_w, c) of `kernel` takes the original row
    (p_t // r_t, p_h // r_h, p_w // r_w, c) in diffusers' (p_t, p_h, p_w, C) layout: a nearest upsampling."""
    reps = [k // p for k, p in zip(kernel, patch_size)]
    channels = linear.out_features // math.prod(patch_size)
    w = linear.weight.reshape(*patch_size, channels, linear.in_features)  # (p_t, p_h, p_w, C, d)
    b = linear.bias.reshape(*patch_size, channels)  # (p_t, p_h, p_w, C)
    for axis, r in enumerate(reps):
        w, b = w.repeat_interleave(r, dim=axis), b.repeat_interleave(r, dim=axis)
    out = channels * math.prod(kernel)
    new = nn.Linear(linear.in_features, out, device=linear.weight.device, dtype=linear.weight.dtype)
    new.weight.copy_(w.reshape(out, linear.in_features))
    new.bias.copy_(b.reshape(out))
    return new


def _unpatchify(tokens: torch.Tensor, grid: Kernel, kernel: Kernel) -> torch.Tensor:
    """(B, N, k_t k_h k_w C) tokens of a (T', H', W') grid to (B, C, T' k_t, H' k_h, W' k_w), as diffusers."""
    x = tokens.reshape(tokens.shape[0], *grid, *kernel, -1)  # (B, T', H', W', k_t, k_h, k_w, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', k_t, H', k_h, W', k_w)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


# The model ---------------------------------------------------------------------------------------------


class PPFTransformer(nn.Module):
    """A `WanTransformer3DModel` with per-stage patchify / unpatchify layers (PPF, METHOD.md 9).

    Built from a (pretrained) transformer, the stage >= 1 layers start as the Kronecker-averaged patch
    embedding and the row-copied `proj_out`, so stage i initially computes "average-pool the latent, run
    the original, upsample nearest" (exactly so with `rope_positions="grid"`). `forward` has the arguments
    of `WanTransformer3DModel.forward`; each sample's stage follows from its timestep 1000 sigma.
    """

    # Kept in float32 under a bf16 / fp16 cast, as in the base (names match: "transformer.blocks.0.norm2").
    _keep_in_fp32_modules = WanTransformer3DModel._keep_in_fp32_modules

    def __init__(self, transformer: WanTransformer3DModel, config: PyramidConfig | None = None):
        super().__init__()
        config = PyramidConfig(kind="patch") if config is None else config
        if config.kind != "patch":
            raise InputError(f"a PPFTransformer needs a pyramid config of kind 'patch', got {config.kind!r}")
        if transformer.config.image_dim is not None:
            raise InputError(
                "PPF supports text-to-video Wan transformers only (this one has an image branch)"
            )
        self.transformer = transformer
        self.pyramid_config = config
        self.patch_size = tuple(transformer.config.patch_size)
        self.stage_kernels = tuple(config.kernels(i, self.patch_size) for i in range(config.num_stages))
        # Stage 0's kernel is the original one: it runs on the transformer's own layers (ModuleDicts are
        # keyed by the stage index, so state-dict names read patch_embeds.2.weight for stage 2).
        coarse = [str(i) for i in range(1, config.num_stages)]
        embed, proj = transformer.patch_embedding, transformer.proj_out
        self.patch_embeds = nn.ModuleDict(
            {i: expand_patch_embedding(embed, self._kernel(i, 0)) for i in coarse}
        )
        self.first_patch_embeds = nn.ModuleDict(
            {i: expand_patch_embedding(embed, self._kernel(i, 1)) for i in coarse}
        )
        self.proj_outs = nn.ModuleDict(
            {i: expand_proj_out(proj, self.patch_size, self._kernel(i, 0)) for i in coarse}
        )
        self.first_proj_outs = nn.ModuleDict(
            {i: expand_proj_out(proj, self.patch_size, self._kernel(i, 1)) for i in coarse}
        )
        self.stage_embedding = None
        if config.stage_embedding:
            w = embed.weight
            self.stage_embedding = nn.Embedding(config.num_stages, w.shape[0], device=w.device, dtype=w.dtype)
            nn.init.zeros_(self.stage_embedding.weight)  # zero: the model starts as without it

    def _kernel(self, stage: str | int, part: int) -> Kernel:
        return self.stage_kernels[int(stage)][part]

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def config(self):
        """The base transformer's diffusers config: channels, text width and blocks are the base's."""
        return self.transformer.config

    @property
    def num_stages(self) -> int:
        return self.pyramid_config.num_stages

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def stages_of(self, timestep: torch.Tensor) -> torch.Tensor:
        """The PPF stage of each sample's timestep 1000 sigma, (B,) long (see `ppf_stage_of`)."""
        return ppf_stage_of(
            timestep.detach().to(torch.float64) / TIMESTEP_SCALE, self.pyramid_config.clean_ends
        )

    def match_base(self) -> PPFTransformer:
        """Move the PPF layers to the base transformer's device and dtype (after a pipeline `.to(...)`)."""
        w = self.transformer.patch_embedding.weight
        for name, module in self.named_children():
            if name != "transformer" and module is not None:
                module.to(device=w.device, dtype=w.dtype)
        return self

    # Forward -----------------------------------------------------------------------------------------

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
    ):
        """Velocity of every sample with its own stage's kernel, picked from `timestep` (B,) = 1000 sigma.

        A batch that mixes stages runs one forward per stage (their token counts differ) and is put back
        in order. `encoder_hidden_states_image` must be None (text-to-video). Returns like diffusers.
        """
        if encoder_hidden_states_image is not None:
            raise ValueError("PPFTransformer is text-to-video only: encoder_hidden_states_image must be None")
        if timestep.ndim != 1 or timestep.shape[0] != hidden_states.shape[0]:
            raise ValueError(f"PPF needs one timestep per sample, got shape {tuple(timestep.shape)}")
        stages = self.stages_of(timestep)
        present = stages.unique().tolist()
        if len(present) == 1:
            output = self.forward_stage(hidden_states, timestep, encoder_hidden_states, present[0])
        else:
            rows = [torch.nonzero(stages == s).squeeze(1) for s in present]
            parts = [
                self.forward_stage(hidden_states[r], timestep[r], encoder_hidden_states[r], s)
                for s, r in zip(present, rows)
            ]
            order = torch.argsort(torch.cat(rows).to(hidden_states.device))
            output = torch.cat(parts)[order]
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    def forward_stage(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        stage: int,
    ) -> torch.Tensor:
        """One stage's forward on (B, C, T, H, W): patchify, shared blocks, modulated norm, unpatchify.

        Follows `WanTransformer3DModel.forward` step by step (text-to-video, one timestep per sample), with
        the stage's patch layers and RoPE tables at the stage's token positions.
        """
        base = self.transformer
        latent_thw = hidden_states.shape[2:]
        kernels = self.stage_kernels[stage]
        positions = ppf_positions(
            latent_thw, kernels, self.patch_size, self.pyramid_config.rope_positions, hidden_states.device
        )
        rotary_emb = rope_tables(positions, base.config.attention_head_dim)  # (1, N, 1, head_dim) x 2
        tokens = self.patchify(hidden_states, stage)  # (B, N, d)
        temb, timestep_proj, text = self.condition(timestep, encoder_hidden_states, stage)

        if torch.is_grad_enabled() and base.gradient_checkpointing:
            for block in base.blocks:
                tokens = base._gradient_checkpointing_func(block, tokens, text, timestep_proj, rotary_emb)
        else:
            for block in base.blocks:
                tokens = block(tokens, text, timestep_proj, rotary_emb)

        shift, scale = (base.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(
            2, dim=1
        )  # (B, 1, d)
        tokens = (base.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        return self.unpatchify(tokens, stage, latent_thw)

    def condition(self, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, stage: int):
        """(temb (B, d), modulation (B, 6, d), text (B, N_txt, d)), as `WanTimeTextImageEmbedding`, with the
        optional stage embedding added to temb before the modulation projection (METHOD.md 9)."""
        embedder = self.transformer.condition_embedder
        t = embedder.timesteps_proj(timestep)  # (B, freq_dim)
        time_dtype = next(iter(embedder.time_embedder.parameters())).dtype
        if t.dtype != time_dtype and time_dtype != torch.int8:
            t = t.to(time_dtype)
        temb = embedder.time_embedder(t).type_as(encoder_hidden_states)  # (B, d)
        if self.stage_embedding is not None:
            temb = temb + self.stage_embedding.weight[stage].to(temb.dtype)
        timestep_proj = embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1))  # (B, 6, d)
        return temb, timestep_proj, embedder.text_embedder(encoder_hidden_states)

    def patchify(self, hidden_states: torch.Tensor, stage: int) -> torch.Tensor:
        """(B, C, T, H, W) -> tokens (B, N, d): frame 0's tokens first, then those of frames >= 1."""
        ppf_token_grids(hidden_states.shape[2:], self.stage_kernels[stage])  # validates the size
        if stage == 0:
            parts = [self.transformer.patch_embedding(hidden_states)]  # (B, d, T, H/2, W/2)
        else:
            parts = [self.first_patch_embeds[str(stage)](hidden_states[:, :, :1])]  # (B, d, 1, H', W')
            if hidden_states.shape[2] > 1:
                parts.append(self.patch_embeds[str(stage)](hidden_states[:, :, 1:]))  # (B, d, T'', H', W')
        tokens = torch.cat([p.flatten(2) for p in parts], dim=2).transpose(1, 2)  # (B, N, d)
        return tokens.contiguous()

    def unpatchify(self, tokens: torch.Tensor, stage: int, latent_thw) -> torch.Tensor:
        """Tokens (B, N, d) after the output norm -> (B, C_out, T, H, W) with the stage's projections."""
        first_grid, rest_grid = ppf_token_grids(latent_thw, self.stage_kernels[stage])
        if stage == 0:
            grid = (first_grid[0] + rest_grid[0], *first_grid[1:])
            return _unpatchify(self.transformer.proj_out(tokens), grid, self.patch_size)
        n_first = math.prod(first_grid)
        kernel, first_kernel = self.stage_kernels[stage]
        parts = [_unpatchify(self.first_proj_outs[str(stage)](tokens[:, :n_first]), first_grid, first_kernel)]
        if n_first < tokens.shape[1]:
            rest = self.proj_outs[str(stage)](tokens[:, n_first:])
            parts.append(_unpatchify(rest, rest_grid, kernel))
        return torch.cat(parts, dim=2)  # frame 0, then frames >= 1

    # Saving and loading ------------------------------------------------------------------------------

    def layers_state_dict(self) -> dict[str, torch.Tensor]:
        """The PPF's own tensors (stage >= 1 patch layers, stage embedding): everything but the base."""
        return {
            name: tensor.detach().contiguous()
            for name, tensor in self.state_dict().items()
            if not name.startswith("transformer.")
        }

    def save_layers(self, folder: str | os.PathLike) -> None:
        """Write `ppf_layers.safetensors` and `pyramid_config.json` into `folder` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / PPF_LAYERS_NAME) as tmp:
            save_file(self.layers_state_dict(), tmp)
        write_json(folder / PPF_CONFIG_NAME, self.pyramid_config.to_dict())
        (folder / LEGACY_PPF_CONFIG_NAME).unlink(missing_ok=True)

    def save_pretrained(self, folder: str | os.PathLike, **kwargs) -> None:
        """A PPF model folder: the base transformer (diffusers `save_pretrained`) plus the PPF layers."""
        self.transformer.save_pretrained(folder, **kwargs)
        self.save_layers(folder)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        transformer: WanTransformer3DModel | None = None,
    ) -> PPFTransformer:
        """Load a PPF model folder; `transformer` supplies an already loaded base (a pipeline's).

        Missing, corrupt or mismatched files raise a one-line `CheckpointError`.
        """
        folder = Path(folder)
        config = load_ppf_config(folder)
        layers_path = folder / PPF_LAYERS_NAME
        weights = load_safetensors(layers_path)  # checked before the (large) base is loaded
        if transformer is None:
            transformer = load_diffusers_transformer(folder, torch_dtype)
        model = cls(transformer, config)
        expected = {name: tuple(t.shape) for name, t in model.layers_state_dict().items()}
        found = {name: tuple(t.shape) for name, t in weights.items()}
        if found != expected:
            missing = sorted(set(expected) - set(found))
            unexpected = sorted(set(found) - set(expected))
            wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
            what = (
                f"missing {missing[0]}"
                if missing
                else f"unexpected {unexpected[0]}"
                if unexpected
                else f"{wrong[0]} has shape {found[wrong[0]]}, expected {expected[wrong[0]]}"
            )
            raise CheckpointError(
                f"{layers_path}: PPF layers do not match {PPF_CONFIG_NAME} and the base transformer "
                f"({what}); re-save the model with PPFTransformer.save_pretrained"
            )
        model.load_state_dict(weights, strict=False)  # strict=False: the base's weights are loaded already
        return model


def load_ppf_config(folder: str | os.PathLike) -> PyramidConfig:
    """The patch-pyramid `PyramidConfig` of a PPF transformer folder (its `pyramid_config.json`, or the
    `ppf_config.json` of an older folder, read as the same layout); a missing or invalid file raises a
    one-line CheckpointError."""
    path = Path(folder) / PPF_CONFIG_NAME
    if not path.is_file() and (Path(folder) / LEGACY_PPF_CONFIG_NAME).is_file():
        path = Path(folder) / LEGACY_PPF_CONFIG_NAME
    data = read_config_json(path, "a PPF model's pyramid_config.json (PyramidConfig fields, kind 'patch')")
    try:
        return PyramidConfig.from_dict({"kind": "patch", **data}, "PPF config")
    except (InputError, TypeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: invalid PPF config ({reason}); re-save the model") from None


def find_ppf_folder(path: str | os.PathLike) -> Path | None:
    """The PPF transformer folder inside `path` (a pipeline folder's transformer/, or `path` itself), or
    None when `path` holds a plain model."""
    path = Path(path)
    for folder in (path / "transformer", path):
        if (folder / PPF_LAYERS_NAME).is_file():
            return folder
    return None


class StageGuidance(nn.Module):
    """Classifier-free guidance with one scale per PPF stage (METHOD.md 9 and 5.2): the stage of each
    sample's sigma picks its w, then `CFGVelocity` applies uncond + w (cond - uncond)."""

    def __init__(self, model: nn.Module, scales, clean_ends):
        super().__init__()
        self.model = model
        self.scales = tuple(float(w) for w in scales)  # by stage index, 0 = full resolution
        self.clean_ends = tuple(clean_ends)
        if len(self.scales) != len(self.clean_ends) + 1:
            raise ValueError(f"{len(self.clean_ends) + 1} stages need as many guidance scales, got {scales}")

    def forward(self, x, sigma, encoder_hidden_states, negative_encoder_hidden_states=None, **kwargs):
        """Guided velocity; arguments as `CFGVelocity.forward`."""
        sigma_b = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])  # (B,)
        scale = torch.tensor(self.scales, dtype=torch.float32)[ppf_stage_of(sigma_b.cpu(), self.clean_ends)]
        guided = CFGVelocity(self.model, scale.to(x.device))
        return guided(x, sigma, encoder_hidden_states, negative_encoder_hidden_states, **kwargs)


def load_ppf_or_wan(init: str, seed: int = 0):
    """A PPF model folder as its `PPFTransformer` (per-stage kernels), anything else (a preset, a plain Wan
    folder) as `load_transformer_for` loads it: the teacher and fake score of PPF-DMD (METHOD.md 9)."""
    folder = find_ppf_folder(init)
    return PPFTransformer.from_pretrained(folder) if folder is not None else load_transformer_for(init, seed)
