"""`PyramidalWanPipeline`: text- and image-to-video with a Wan model, sampled through a resolution pyramid.

The pipeline is a thin shell around the samplers of `pyramidal_wan.pyramid` (house style rule 6): it checks
inputs, encodes the text once, draws the start noise, hands a velocity model (`WanVelocity` + `CFGVelocity`)
to `sample_pyramid_euler` or `sample_pyramid_few_step`, and decodes with the VAE exactly as diffusers'
`WanPipeline` does. Schedule "0-...-0-N" is plain Wan sampling (N Euler steps at full resolution, shift 3).
An image-to-video model gets its conditioning image at every stage's size (`models.conditioning`), made
once per call and passed to the velocity model with the text; at 0-...-0-N this is exactly diffusers'
`WanImageToVideoPipeline`.

Pipeline-level defaults live in the pipeline config (`register_to_config`, saved in model_index.json):
the default video size and negative prompt. A Wan folder that lacks them gets Wan2.1's: 81x448x832 (the
paper's size, divisible for three stages) and Wan2.1's `sample_neg_prompt`. The toy models store their own
(e.g. 17x64x64 and ""). The pyramid settings travel as `pyramid_config.json` beside the components.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import (
    AutoencoderKLWan,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    WanTransformer3DModel,
)
from diffusers.loaders import WanLoraLoaderMixin
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils.torch_utils import get_module_execution_device
from diffusers.video_processor import VideoProcessor
from PIL import Image

from pyramidal_wan.errors import InputError
from pyramidal_wan.models.caching import (
    BATCHED_CFG_CACHES,
    CACHES,
    MAG_RATIOS_FILE,
    MagRatioRecorder,
    StageCachedVelocity,
    check_cache,
    check_mag_ratios,
    load_mag_ratios,
    sampled_stages,
)
from pyramidal_wan.models.checkpoint import (
    PLAIN_MODEL_CONFIG,
    PYRAMID_CONFIG_NAME,
    pyramid_config_or_plain,
    save_pyramid_config,
)
from pyramidal_wan.models.conditioning import (
    ImageCondition,
    LatentEncoder,
    encode_clip_image,
    stage_image,
    with_first_frame_mask,
)
from pyramidal_wan.models.denoiser import CFGVelocity, WanVelocity, batched_cfg_pays
from pyramidal_wan.models.loading import PIPELINE_COMPONENTS, load_pipeline_components, read_model_index
from pyramidal_wan.models.ppf import PPFTransformer, StageGuidance
from pyramidal_wan.models.text import encode_prompts
from pyramidal_wan.models.text import max_sequence_length as tokenizer_max_length
from pyramidal_wan.models.tiny_decoder import TinyWanDecoder, check_decoder_fits
from pyramidal_wan.models.vae_speed import fast_cpu_inference
from pyramidal_wan.models.wan_family import (
    EXPERT_COMPONENT,
    IMAGE_ENCODER_COMPONENTS,
    ExpertVelocity,
    check_image_given,
    check_image_model,
)
from pyramidal_wan.pipelines.planning import (
    WAN21_SIZE,
    SamplingPlan,
    check_folder,
    plan_from_folder,
    plan_sampling,
    resolve_sampling,
)
from pyramidal_wan.pyramid import (
    Pyramid,
    PyramidConfig,
    get_fewstep_grid,
    get_multistep_grid,
    get_ppf_grid,
    is_baseline_schedule,
    randn,
    sample_ppf_euler,
    sample_ppf_few_step,
    sample_pyramid_euler,
    sample_pyramid_few_step,
)
from pyramidal_wan.pyramid.sampling import BASELINE_SHIFT

if TYPE_CHECKING:  # annotations only: importing CLIPImageProcessor warns without torchvision
    from transformers import CLIPImageProcessor, CLIPVisionModel

# Wan2.1's default negative prompt (`sample_neg_prompt` in the Wan2.1 repo's wan/configs/shared_config.py).
WAN21_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# Pipeline settings kept in model_index.json (see the module docstring).
PIPELINE_SETTINGS = ("default_num_frames", "default_height", "default_width", "default_negative_prompt")
OUTPUT_TYPES = ("np", "pil", "pt", "latent")


class PyramidalWanPipeline(DiffusionPipeline, WanLoraLoaderMixin):
    r"""
    Pipeline for pyramidal (and few-step) text- and image-to-video generation with a Wan2.1 / Wan2.2 model.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer of the text encoder (Wan2.1: umT5's).
        text_encoder ([`~transformers.UMT5EncoderModel`]):
            Text encoder (Wan2.1: umT5-XXL).
        vae ([`AutoencoderKLWan`]):
            Video VAE; `latents_mean` / `latents_std` of its config normalise the latent space.
        transformer ([`WanTransformer3DModel`] or [`PPFTransformer`]):
            The denoiser, predicting the flow-matching velocity at timestep 1000 * sigma. A `PPFTransformer`
            (patch pyramid, METHOD.md 9; needs `pyramid_config.kind == "patch"`) keeps its base transformer
            as the registered `transformer` component and its patch layers in `ppf`. With `transformer_2`,
            the high-noise expert of a Wan2.2 A14B pair.
        transformer_2 ([`WanTransformer3DModel`], *optional*):
            Wan2.2 A14B's low-noise expert: it runs every evaluation whose timestep 1000 * sigma is below
            1000 * `boundary_ratio` (at every stage of the pyramid, sigma being the stage's own noise level).
        boundary_ratio (`float`, *optional*):
            Where the experts switch, as in diffusers' `WanPipeline`; needed with `transformer_2` only.
        expand_timesteps (`bool`, defaults to `False`):
            Wan2.2-TI2V-5B's per-token timesteps (diffusers' `WanPipeline` argument): with an `image`, the
            first latent frame is the clean image latent and its tokens get timestep 0. Text-to-video gives
            every token the same timestep, so sampling is unchanged by it.
        image_encoder ([`~transformers.CLIPVisionModel`], *optional*), image_processor
        ([`~transformers.CLIPImageProcessor`], *optional*):
            Wan2.1-I2V's CLIP image encoder and its preprocessing, needed by a transformer with `image_dim`.
        scheduler ([`FlowMatchEulerDiscreteScheduler`], *optional*):
            Not used for sampling (the pyramid samplers walk their own grids); kept so that a saved folder is
            a complete `WanPipeline` layout. Defaults to flow-matching Euler with shift 3.
        pyramid_config ([`PyramidConfig`], *optional*):
            How the model must be sampled; defaults to `PLAIN_MODEL_CONFIG` (plain Wan, schedule 0-0-50).
        default_num_frames (`int`, defaults to 81), default_height (`int`, defaults to 448),
        default_width (`int`, defaults to 832):
            The video size used when a call does not give one.
        default_negative_prompt (`str`, defaults to Wan2.1's negative prompt):
            The unconditional text used for CFG when a call does not give `negative_prompt`.

    LoRAs load as on diffusers' `WanPipeline` (`load_lora_weights`, `set_adapters`, `fuse_lora`).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->transformer->transformer_2->vae"
    _optional_components = ["scheduler", "transformer_2", "image_encoder", "image_processor"]

    def __init__(
        self,
        tokenizer,
        text_encoder,
        vae: AutoencoderKLWan,
        transformer: WanTransformer3DModel | PPFTransformer,
        scheduler: FlowMatchEulerDiscreteScheduler | None = None,
        pyramid_config: PyramidConfig | None = None,
        default_num_frames: int = WAN21_SIZE[0],
        default_height: int = WAN21_SIZE[1],
        default_width: int = WAN21_SIZE[2],
        default_negative_prompt: str = WAN21_NEGATIVE_PROMPT,
        transformer_2: WanTransformer3DModel | None = None,
        boundary_ratio: float | None = None,
        expand_timesteps: bool = False,
        image_encoder: CLIPVisionModel | None = None,
        image_processor: CLIPImageProcessor | None = None,
    ):
        super().__init__()
        if scheduler is None:
            scheduler = FlowMatchEulerDiscreteScheduler(shift=BASELINE_SHIFT)
        # A PPF model registers its base, so the folder stays a WanPipeline layout (PPF layers ride along).
        self.ppf = transformer if isinstance(transformer, PPFTransformer) else None
        transformer = transformer.transformer if self.ppf is not None else transformer
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
            transformer_2=transformer_2,
            image_encoder=image_encoder,
            image_processor=image_processor,
        )
        self.register_to_config(
            default_num_frames=default_num_frames,
            default_height=default_height,
            default_width=default_width,
            default_negative_prompt=default_negative_prompt,
            boundary_ratio=boundary_ratio,
            expand_timesteps=expand_timesteps,
        )
        self.pyramid_config = PLAIN_MODEL_CONFIG if pyramid_config is None else pyramid_config
        fast_cpu_inference(vae)  # the same decode within float32 rounding, several times faster on a CPU
        # MagCache magnitude ratios per stage index (`models.caching`), read from a folder's magcache.json.
        self.mag_ratios: dict[int, list[float]] | None = None
        # A `TinyWanDecoder` decoding in place of the VAE's decoder (`set_decoder`); not a saved component.
        self.decoder: TinyWanDecoder | None = None
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)
        self._check_ppf()
        self.image_mode = self._check_transformers()

    def _check_ppf(self) -> None:
        """A patch-pyramid config needs a PPFTransformer with the same stages, and vice versa."""
        patch = self.pyramid_config.kind == "patch"
        if patch and self.ppf is None:
            raise InputError(
                "pyramid_config kind 'patch' needs a PPFTransformer; wrap the transformer in PPFTransformer "
                "or load a PPF model folder"
            )
        if self.ppf is not None and self.ppf.pyramid_config.layout() != self.pyramid_config.layout():
            raise InputError(
                f"a PPFTransformer with {self.ppf.pyramid_config} needs pyramid_config kind 'patch' with the "
                "same layout (stages, factors, clean_ends, ...): pass its pyramid_config or .with_sampling()"
            )

    def _check_transformers(self) -> str | None:
        """The experts take the image alike and fit the VAE; a second expert comes with its boundary and
        vice versa; a CLIP branch comes with its image encoder. Returns the image mode (`image_mode`)."""
        modes = {
            check_image_model(
                module.config,
                self.config.expand_timesteps,
                self.vae.config.z_dim,
                self.vae_scale_factor_temporal,
                name,
            )
            for name in ("transformer", EXPERT_COMPONENT)
            if (module := getattr(self, name)) is not None
        }
        if len(modes) > 1:
            raise InputError(f"the two experts take the image differently ({sorted(map(str, modes))})")
        mode = modes.pop()
        if mode == "clip" and (self.image_encoder is None or self.image_processor is None):
            raise InputError(
                "a transformer with a CLIP image branch (image_dim) needs image_encoder and image_processor"
            )
        if mode is not None and self.ppf is not None:
            raise InputError(
                "a patch-pyramid (PPF) model is text-to-video only; image conditioning needs a "
                "resolution pyramid"
            )
        if (self.transformer_2 is None) != (self.config.boundary_ratio is None):
            raise InputError(
                "transformer_2 (the low-noise expert) and boundary_ratio go together; pass both or neither"
            )
        if self.transformer_2 is not None and self.ppf is not None:
            raise InputError("a patch-pyramid (PPF) model has one transformer; drop transformer_2")
        return mode

    # Loading and saving ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        torch_dtype: torch.dtype | dict[str, torch.dtype] | None = None,
        pyramid_config: PyramidConfig | None = None,
    ) -> PyramidalWanPipeline:
        r"""
        Load a local diffusers Wan pipeline folder and its `pyramid_config.json`.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A `WanPipeline`-layout folder (model_index.json, tokenizer, text_encoder, vae, transformer and
                optionally scheduler). Nothing is downloaded.
            torch_dtype (`torch.dtype` or `dict[str, torch.dtype]`, *optional*):
                One dtype for every model component, or one per component name (others keep their saved
                dtype).
            pyramid_config ([`PyramidConfig`], *optional*):
                Overrides the folder's `pyramid_config.json`. Without either, the model is plain Wan.

        Returns:
            [`PyramidalWanPipeline`]: the pipeline on the CPU. Missing or corrupt files raise a one-line
            `CheckpointError`.
        """
        folder = Path(pretrained_model_name_or_path)
        index = read_model_index(folder)
        boundary_ratio = check_folder(folder)
        config = pyramid_config if pyramid_config is not None else pyramid_config_or_plain(folder)
        names = tuple(
            n for n in PIPELINE_COMPONENTS if n != "scheduler" or index.get(n) not in (None, [None, None])
        ) + ((EXPERT_COMPONENT,) if boundary_ratio is not None else ())
        names += tuple(n for n in IMAGE_ENCODER_COMPONENTS if index.get(n) not in (None, [None, None]))
        components = load_pipeline_components(folder, names, torch_dtype)
        if config.kind == "patch":  # the PPF layers are saved beside the base transformer's weights
            ppf = PPFTransformer.from_pretrained(
                folder / "transformer", transformer=components["transformer"]
            )
            # The PPF-only fields come from the transformer's own file (older folders' pipeline-level
            # pyramid_config.json does not have them).
            saved = ppf.pyramid_config
            config = replace(
                config, stage_embedding=saved.stage_embedding, rope_positions=saved.rope_positions
            )
            components["transformer"] = ppf
        settings = {k: index[k] for k in PIPELINE_SETTINGS if k in index}
        settings["expand_timesteps"] = bool(index.get("expand_timesteps", False))
        pipe = cls(**components, pyramid_config=config, boundary_ratio=boundary_ratio, **settings)
        if (folder / MAG_RATIOS_FILE).is_file():
            pipe.mag_ratios = load_mag_ratios(folder / MAG_RATIOS_FILE)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs):
        r"""
        Save the components as a diffusers Wan folder (`WanPipeline` loads it too) and `pyramid_config.json`.

        A plain model (`pyramid_config == PLAIN_MODEL_CONFIG`) is saved without `pyramid_config.json`, and
        a stale one in `save_directory` is removed, so the folder reads back as the plain model it is.

        Args:
            save_directory (`str` or `os.PathLike`): the folder to write (created if missing).
            safe_serialization (`bool`, defaults to `True`): write safetensors weights.
            **kwargs: passed to [`~DiffusionPipeline.save_pretrained`].
        """
        super().save_pretrained(save_directory, safe_serialization=safe_serialization, **kwargs)
        if self.ppf is not None:
            self.ppf.save_layers(Path(save_directory) / "transformer")
        if self.pyramid_config == PLAIN_MODEL_CONFIG:
            (Path(save_directory) / PYRAMID_CONFIG_NAME).unlink(missing_ok=True)
        else:
            save_pyramid_config(save_directory, self.pyramid_config)

    # A saved folder's plan, from its JSON configs only (`planning.plan_from_folder`).
    plan_from_folder = staticmethod(plan_from_folder)

    # Inputs ------------------------------------------------------------------------------------------

    def resolve_sampling(
        self, schedule=None, sampler=None, guidance_scale=None
    ) -> tuple[tuple[int, ...], str, float]:
        """Steps per stage, sampler and CFG scale of a call (see `resolve_sampling` at module level)."""
        return resolve_sampling(self.pyramid_config, schedule, sampler, guidance_scale)

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        num_frames: int,
        height: int,
        width: int,
        schedule=None,
        sampler: str | None = None,
        guidance_scale: float | tuple[float, ...] | None = None,
        num_videos_per_prompt: int = 1,
        generator=None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        plan: SamplingPlan | None = None,
        solver: str | None = None,
        cache: str | None = None,
        image: Image.Image | None = None,
    ) -> SamplingPlan:
        r"""
        Check every argument before any model work; raise a one-line `InputError` naming the problem and fix.

        Args:
            (as in [`~PyramidalWanPipeline.__call__`], with the size already resolved)

        Returns:
            [`SamplingPlan`]: `plan` when given (checked against this model), else the one planned here.
        """
        if plan is None:
            plan = plan_sampling(
                self.pyramid_config,
                num_frames,
                height,
                width,
                schedule,
                sampler,
                guidance_scale,
                vae_scale_temporal=self.vae_scale_factor_temporal,
                vae_scale_spatial=self.vae_scale_factor_spatial,
                patch_size=tuple(self.transformer.config.patch_size),
                solver=solver,
            )
        elif plan.kind != self.pyramid_config.kind or len(plan.steps) != self.pyramid_config.num_stages:
            raise InputError(
                f"the plan ({plan.kind}, schedule {plan.schedule}) was made for another model; plan with "
                "this model's pyramid_config (plan_sampling or plan_from_folder)"
            )
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type {output_type!r} must be one of {', '.join(OUTPUT_TYPES)}")
        batch_size = self._check_prompts(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, plan.guidance_scale
        )
        if num_videos_per_prompt < 1:
            raise InputError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        total = batch_size * num_videos_per_prompt
        if isinstance(generator, (list, tuple)) and len(generator) != total:
            raise InputError(
                f"got {len(generator)} generators for {total} videos; pass one per video or a single one"
            )
        # Sampling starts at the lowest stage (every entry of a pyramidal schedule is >= 1); PPF at full size.
        expected = (total, self.transformer.config.out_channels, *plan.noise_latent)
        if latents is not None and tuple(latents.shape) != expected:
            raise InputError(
                f"latents of shape {tuple(latents.shape)} do not fit; schedule {plan.schedule} "
                f"starts from noise of shape {expected}"
            )
        if image is not None and not isinstance(image, Image.Image):
            raise InputError(
                f"image must be a PIL image, got {type(image).__name__}; open files with PIL.Image"
            )
        check_image_given(self.image_mode, image is not None, "this pipeline")
        check_cache(cache, plan.sampler, plan.kind, plan.guidance_scale)
        if cache == "magcache":
            check_mag_ratios(self.mag_ratios, sampled_stages(plan.steps))
        if cache is not None and self.transformer_2 is not None:
            raise InputError(f"cache {cache!r} is not supported on a two-expert (Wan2.2 A14B) model; drop it")
        return plan

    def _check_prompts(
        self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance_scale
    ) -> int:
        """Check prompts and embeddings as WanPipeline does, raising InputError; returns the batch size."""
        if (prompt is None) == (prompt_embeds is None):
            raise InputError("pass exactly one of prompt and prompt_embeds")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise InputError("pass at most one of negative_prompt and negative_prompt_embeds")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not (
                isinstance(value, str)
                or (isinstance(value, list) and value and all(isinstance(p, str) for p in value))
            ):
                raise InputError(
                    f"{name} must be a string or a non-empty list of strings, got {type(value).__name__}"
                )
        if prompt_embeds is not None and prompt_embeds.ndim != 3:
            raise InputError(
                f"prompt_embeds must be (batch, tokens, dim), got shape {tuple(prompt_embeds.shape)}"
            )
        batch_size = (
            1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
        )
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch_size:
            raise InputError(
                f"{len(negative_prompt)} negative prompts for {batch_size} prompts; give one per prompt"
            )
        if (
            guidance_scale > 1.0
            and prompt_embeds is not None
            and negative_prompt_embeds is not None
            and prompt_embeds.shape != negative_prompt_embeds.shape
        ):
            raise InputError(
                f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must have the shape of "
                f"prompt_embeds {tuple(prompt_embeds.shape)} (both branches share one batched call)"
            )
        return batch_size

    # Text ----------------------------------------------------------------------------------------------

    def _get_t5_prompt_embeds(
        self, prompt: list[str], num_videos_per_prompt: int, max_sequence_length: int, device: torch.device
    ) -> torch.Tensor:
        """Text embeddings (B * num_videos_per_prompt, max_sequence_length, D), zero after each prompt.

        The same function (`models.text.encode_prompts`) fills the training caches, so a model samples with
        exactly the embeddings it was trained on; it matches WanPipeline's (zero padding: Wan's
        cross-attention has no mask).
        """
        embeds = encode_prompts(self.tokenizer, self.text_encoder, prompt, max_sequence_length)  # (B, L, D)
        return embeds.to(device).repeat_interleave(num_videos_per_prompt, dim=0)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        device: torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""
        Encode the prompt and, with CFG, the negative prompt (as `WanPipeline.encode_prompt` does).

        Args:
            prompt (`str` or `list[str]`, *optional*): the prompt(s); or pass `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*):
                The unconditional text; defaults to the pipeline's `default_negative_prompt`.
            do_classifier_free_guidance (`bool`, defaults to `True`): whether to encode the negative prompt.
            num_videos_per_prompt (`int`, defaults to 1): copies of each embedding.
            prompt_embeds (`torch.Tensor`, *optional*): pre-computed prompt embeddings (B, L, D).
            negative_prompt_embeds (`torch.Tensor`, *optional*): pre-computed negative embeddings (B, L, D).
            max_sequence_length (`int`, *optional*):
                Text tokens (padding / truncation length); defaults to the tokenizer's `model_max_length`,
                at most 512.
            device (`torch.device`, *optional*): where to put the embeddings.

        Returns:
            `tuple`: prompt embeddings and negative-prompt embeddings (None without CFG), each
            (B * num_videos_per_prompt, L, D).
        """
        device = device or self._execution_device
        if max_sequence_length is None:
            max_sequence_length = self.default_max_sequence_length(prompt_embeds)
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if prompt_embeds is None:
            prompt_embeds = self._get_t5_prompt_embeds(
                prompts, num_videos_per_prompt, max_sequence_length, device
            )
        else:
            prompt_embeds = prompt_embeds.to(device).repeat_interleave(num_videos_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            batch_size = prompt_embeds.shape[0] // num_videos_per_prompt
            negative = self.config.default_negative_prompt if negative_prompt is None else negative_prompt
            negative = batch_size * [negative] if isinstance(negative, str) else negative
            negative_prompt_embeds = self._get_t5_prompt_embeds(
                negative, num_videos_per_prompt, max_sequence_length, device
            )
        else:
            negative_prompt_embeds = negative_prompt_embeds.to(device).repeat_interleave(
                num_videos_per_prompt, dim=0
            )
        return prompt_embeds, negative_prompt_embeds

    def default_max_sequence_length(self, prompt_embeds: torch.Tensor | None = None) -> int:
        """Text length of a call: that of given `prompt_embeds`, else the tokenizer's (at most 512)."""
        if prompt_embeds is not None:
            return prompt_embeds.shape[1]
        return tokenizer_max_length(self.tokenizer)

    # Sampling ------------------------------------------------------------------------------------------

    def compile_blocks(self, **compile_kwargs) -> None:
        """`torch.compile` the transformer's repeated blocks (diffusers' `compile_repeated_blocks`) with
        static shapes: one graph per stage's token grid, all compiled during the first video, none after.
        `compile_kwargs` go to `torch.compile` (e.g. `mode`, `backend`)."""
        self.transformer.compile_repeated_blocks(**{"dynamic": False, **compile_kwargs})

    def get_grid(self, plan: SamplingPlan, pyramid: Pyramid):
        """The stage grids (sigmas per stage, lowest resolution first) the sampler walks."""
        if plan.kind == "patch":
            config = self.pyramid_config
            return get_ppf_grid(config.clean_ends, plan.steps, plan.sampler, config.shift)
        if plan.sampler == "fewstep":
            return get_fewstep_grid(pyramid, plan.steps)
        return get_multistep_grid(pyramid, plan.steps, shift=self.pyramid_config.shift)

    def get_sampler(
        self,
        plan: SamplingPlan,
        pyramid: Pyramid,
        cache: str | None = None,
        device: torch.device | None = None,
    ):
        """(velocity model, sampler taking `(model, x, grid, ...)`) of a plan.

        CFG runs cond and uncond as one batched call on accelerators and as two calls on a CPU, where
        batching does not pay (`batched_cfg_pays`). A PPF model samples the plain process at full
        resolution, its kernel and CFG scale switching with the stage of sigma (METHOD.md 9); its 0-...-0-N
        baseline runs the base transformer, which is stage 0. With a step `cache` (resolution pyramids
        only), each CFG branch runs in its own cache context and the cache resets at every stage change.
        """
        if self.ppf is None or is_baseline_schedule(plan.steps):
            # The transformers' dtypes and the device are looked up once per call, as WanPipeline does.
            velocity = WanVelocity(self.transformer, self.transformer.dtype)
            if self.transformer_2 is not None:  # Wan2.2 A14B: the expert follows each evaluation's sigma
                low_noise = WanVelocity(self.transformer_2, self.transformer_2.dtype)
                velocity = ExpertVelocity(velocity, low_noise, self.config.boundary_ratio)
            device = self._execution_device if device is None else device
            batched = batched_cfg_pays(device) or cache in BATCHED_CFG_CACHES
            context = self.transformer.cache_context if cache is not None else None
            model = CFGVelocity(velocity, plan.guidance_scale, batched, context)
            if cache is not None:  # resolution pyramids with one expert only (`check_inputs`)
                num_stages = len(plan.steps)
                stages = {
                    tuple(g.latent): (i, plan.steps[num_stages - 1 - i]) for i, g in enumerate(plan.geometry)
                }
                guidance = model.uses_guidance
                model = StageCachedVelocity(
                    model, self.transformer, CACHES[cache], stages, guidance, self.mag_ratios
                )
            if plan.sampler == "fewstep":
                return model, functools.partial(sample_pyramid_few_step, pyramid=pyramid)
            return model, functools.partial(sample_pyramid_euler, pyramid=pyramid, solver=plan.solver)
        scales = plan.stage_guidance or (plan.guidance_scale,) * self.pyramid_config.num_stages
        # match_base: the PPF layers follow the base transformer through `pipe.to(...)`.
        ppf = self.ppf.match_base()
        velocity = WanVelocity(ppf, ppf.dtype)
        model = StageGuidance(velocity, scales[::-1], self.pyramid_config.clean_ends)  # by stage index
        if plan.sampler == "fewstep":
            return model, sample_ppf_few_step
        return model, functools.partial(sample_ppf_euler, solver=plan.solver)

    def calibrate_mag_ratios(self, prompt: str | list[str], **kwargs) -> dict[int, list[float]]:
        """MagCache magnitude ratios of this model per stage index, measured over one multi-step run.

        Samples `prompt` without a cache (`kwargs` as `__call__`: a multi-step `schedule` or `plan`,
        `generator`, ...) and returns, for every stage, the ratio of each step's residual magnitude to the
        previous step's on the conditional branch (`models.caching.MagRatioRecorder`, diffusers'
        calibration formula). Assign the result to `mag_ratios` (or save it with
        `models.caching.save_mag_ratios` as a folder's magcache.json) to sample with `cache="magcache"`.
        """
        if kwargs.get("plan") is None:
            kwargs.setdefault("sampler", "multistep")
        with MagRatioRecorder(self.transformer) as recorder:
            self(prompt, output_type="latent", callback=recorder.callback, **kwargs)
        return recorder.ratios

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        latent_size: tuple[int, int, int],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Start noise (B, C, T, H, W), drawn on the generator's device (CPU), then moved (as WanPipeline)."""
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        like = torch.empty(0, device=device, dtype=dtype)
        return randn((batch_size, num_channels_latents, *latent_size), like, generator)

    def set_decoder(self, decoder: TinyWanDecoder | None) -> None:
        """Decode with `decoder` (a `TinyWanDecoder` trained for this VAE) instead of the VAE's decoder; None
        restores the VAE's. It is not saved with the pipeline: it is a decode-time choice, like a cache."""
        if decoder is not None:
            check_decoder_fits(
                decoder, self.vae.config.z_dim, self.vae_scale_factor_temporal, self.vae_scale_factor_spatial
            )
        self.decoder = decoder

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel videos (B, 3, F, H, W) in [-1, 1] of normalised latents (B, C, T, H, W).

        Un-normalises with the VAE's latent statistics exactly as WanPipeline does, then decodes, with the
        VAE or the tiny decoder of `set_decoder`. The VAE given at construction has its float32 CPU 3D
        convolutions routed through oneDNN and its RMS norms computed as plain sums (`models.vae_speed`:
        the same videos within float32 rounding, several times faster for small VAEs).
        """
        if self.decoder is not None:  # follows the latents' device: it is not a registered component
            self.decoder.to(latents.device)
        decoder = self.vae if self.decoder is None else self.decoder
        latents = latents.to(get_module_execution_device(decoder), dtype=decoder.dtype)
        z_dim = self.vae.config.z_dim
        latents_mean = torch.tensor(self.vae.config.latents_mean).view(1, z_dim, 1, 1, 1)
        latents_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z_dim, 1, 1, 1)
        latents_mean = latents_mean.to(latents.device, latents.dtype)
        latents_std = latents_std.to(latents.device, latents.dtype)
        latents = latents / latents_std + latents_mean
        if self.decoder is not None:
            return self.decoder(latents)
        return self.vae.decode(latents, return_dict=False)[0]

    def encode_image(self, image: Image.Image, device: torch.device) -> torch.Tensor:
        """CLIP image tokens (1, N, D): the image encoder's penultimate hidden states, as diffusers'
        `WanImageToVideoPipeline.encode_image` makes them."""
        return encode_clip_image(self.image_encoder, self.image_processor, image, device)

    def prepare_image_condition(
        self, image: Image.Image, plan: SamplingPlan, batch_size: int, device: torch.device
    ) -> ImageCondition:
        """The conditioning of `image` at every stage of `plan` (`models.conditioning`).

        The image is resized to the video size by the `VideoProcessor`, as `WanImageToVideoPipeline` does,
        then box-averaged to each stage's height and width (the stage videos' filter). Per stage, the video
        [image, zeros, ...] of the stage's frame count (Wan2.2-TI2V: the image alone) is VAE-encoded (the
        posterior mean) and normalised like the latents; Wan2.1/2.2-I2V put the first-frame mask in front.
        """
        height, width = plan.geometry[0].pixel[1:]
        pixels = self.video_processor.preprocess(image, height=height, width=width)  # (1, 3, H, W)
        pixels = pixels.to(device, torch.float32)
        encode = LatentEncoder(self.vae)
        latents = {}
        for stage in plan.geometry:
            frames, stage_height, stage_width = stage.pixel
            video = stage_image(pixels, stage_height, stage_width)[:, :, None]  # (1, 3, 1, h, w)
            if self.image_mode == "first_frame":
                latent = encode(video)  # (1, C, 1, h', w')
            else:
                zeros = video.new_zeros(1, 3, frames - 1, stage_height, stage_width)
                latent = encode(torch.cat([video, zeros], dim=2))  # (1, C, T, h', w')
                latent = with_first_frame_mask(latent, self.vae_scale_factor_temporal)  # (1, mask + C, ...)
            latents[stage.latent] = latent.to(device).repeat(batch_size, 1, 1, 1, 1)
        embeds = None
        if self.image_mode == "clip":
            embeds = self.encode_image(image, device).repeat(batch_size, 1, 1)  # (B, N, D)
        return ImageCondition(self.image_mode, latents, embeds)

    def _progress_disabled(self) -> bool:
        config = self._progress_bar_config if hasattr(self, "_progress_bar_config") else {}
        return bool(config.get("disable", False))

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        schedule: str | tuple[int, ...] | None = None,
        sampler: str | None = None,
        guidance_scale: float | tuple[float, ...] | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        max_sequence_length: int | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        plan: SamplingPlan | None = None,
        solver: str | None = None,
        cache: str | None = None,
        image: Image.Image | None = None,
    ) -> WanPipelineOutput | tuple:
        r"""
        Generate videos from text, sampling through the model's resolution pyramid.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                The prompt(s) to guide generation. If not defined, pass `prompt_embeds` instead.
            negative_prompt (`str` or `list[str]`, *optional*):
                The unconditional text for CFG; defaults to the pipeline's `default_negative_prompt`. Ignored
                without guidance (`guidance_scale` = 1).
            num_frames (`int`, *optional*):
                Pixel frames, 4k + 1 (the VAE's temporal factor); defaults to `config.default_num_frames`.
            height (`int`, *optional*), width (`int`, *optional*):
                Pixel size; must divide into every stage (VAE factor x patch x pyramid factors, e.g. 64 for
                Wan's three stages). Default to `config.default_height` / `config.default_width`.
            schedule (`str` or `tuple[int]`, *optional*):
                Steps per stage, lowest resolution first: "20-20-10", "2-2-1"; "0-0-N" is plain Wan sampling.
                Defaults to the checkpoint's `default_schedule`.
            sampler (`str`, *optional*):
                "multistep" (Euler with stage jumps, METHOD.md 5) or "fewstep" (x0 prediction and fresh
                re-noising, METHOD.md 6). Defaults to the checkpoint's.
            guidance_scale (`float` or `tuple[float]`, *optional*):
                Standard CFG scale w in uncond + w (cond - uncond); 1 disables guidance. Defaults to the
                checkpoint's for multi-step sampling and to 1 for few-step sampling. A PPF model also takes
                one scale per stage, lowest resolution first like `schedule` (METHOD.md 9).
            num_videos_per_prompt (`int`, defaults to 1):
                The number of videos to generate per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Generator(s) for the start noise and every stage-jump / re-noising draw; one per video for a
                list. A CPU generator gives the same videos on every device.
            latents (`torch.Tensor`, *optional*):
                Start noise at the shape of the schedule's first stage (full resolution for a PPF model),
                instead of drawing it.
            prompt_embeds (`torch.Tensor`, *optional*), negative_prompt_embeds (`torch.Tensor`, *optional*):
                Pre-computed text embeddings (B, L, D); with CFG both must have the same shape.
            output_type (`str`, defaults to `"np"`):
                "np" (B, F, H, W, 3) floats in [0, 1], "pt", "pil" (lists of images) or "latent" (the
                normalised latents, not decoded).
            return_dict (`bool`, defaults to `True`):
                Whether to return a [`WanPipelineOutput`] instead of a plain tuple.
            max_sequence_length (`int`, *optional*):
                Text tokens; defaults to the tokenizer's `model_max_length` (at most 512).
            callback (`Callable`, *optional*):
                Called after every model evaluation with the sampler's dict (`x`, `i`, `stage`, `sigma`,
                `denoised`).
            attention_kwargs (`dict`, *optional*):
                Passed to the transformer's attention processors (e.g. `{"scale": 0.5}` for a LoRA).
            plan ([`SamplingPlan`], *optional*):
                A plan made beforehand (`plan_from_folder`, `plan_sampling`): it replaces the size,
                `schedule`, `sampler`, `guidance_scale` and `solver` arguments, which must then be left unset.
            solver (`str`, *optional*):
                Within-stage solver of multi-step sampling: "euler" (the paper's) or "dpm2m"
                (DPM-Solver++(2M), history reset at every stage jump). Defaults to the checkpoint's.
            cache (`str`, *optional*):
                A diffusers step cache for multi-step sampling, "first-block", "taylorseer", "magcache" (needs
                `mag_ratios`: a folder's magcache.json, from `pyramidal-wan calibrate-magcache`) or
                "fastercache" (runs CFG as one batched call on every device), fresh at every stage change;
                none by default.
            image (`PIL.Image.Image`, *optional*):
                The conditioning image of an image-to-video model (needed by Wan2.1-I2V and Wan2.2-I2V, taken
                by Wan2.2-TI2V-5B, refused by text-to-video models): the video's first frame. It is resized to
                the video size as `WanImageToVideoPipeline` does, then box-averaged to each stage's size and
                VAE-encoded there; the CLIP embedding (Wan2.1-I2V) is made once.

        Returns:
            [`WanPipelineOutput`] or `tuple`: the videos in `.frames` (or the first element of the tuple).
        """
        # 1. Check inputs. Raise error if not correct
        if plan is not None:
            given = {"num_frames": num_frames, "height": height, "width": width, "schedule": schedule}
            given.update(sampler=sampler, guidance_scale=guidance_scale, solver=solver)
            if any(v is not None for v in given.values()):
                names = ", ".join(k for k, v in given.items() if v is not None)
                raise InputError(f"pass either a plan or {names}: the plan already fixes them")
            num_frames, height, width = plan.geometry[0].pixel
        num_frames = self.config.default_num_frames if num_frames is None else num_frames
        height = self.config.default_height if height is None else height
        width = self.config.default_width if width is None else width
        plan = self.check_inputs(
            prompt,
            negative_prompt,
            num_frames,
            height,
            width,
            schedule,
            sampler,
            guidance_scale,
            num_videos_per_prompt,
            generator,
            latents,
            prompt_embeds,
            negative_prompt_embeds,
            output_type,
            plan,
            solver,
            cache,
            image,
        )

        # 2. Define call parameters
        device = self._execution_device
        do_classifier_free_guidance = plan.guidance_scale > 1.0

        # 3. Encode input prompt (once: both CFG branches reuse it at every step of every stage)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            negative_prompt,
            do_classifier_free_guidance,
            num_videos_per_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            max_sequence_length,
            device,
        )

        # 3b. Encode the conditioning image at every stage's size (the CLIP embedding once)
        condition = None
        if image is not None:
            condition = self.prepare_image_condition(image, plan, prompt_embeds.shape[0], device)

        # 4. Prepare timesteps: the per-stage sigma grids
        pyramid = self.pyramid_config.pyramid()
        grid = self.get_grid(plan, pyramid)

        # 5. Prepare latent variables (float32 state, as WanPipeline; the velocity model casts per call)
        latents = self.prepare_latents(
            prompt_embeds.shape[0],
            self.transformer.config.out_channels,
            plan.noise_latent,
            torch.float32,
            device,
            generator,
            latents,
        )

        # 6. Denoising loop: one call to the pyramid sampler
        model, sample = self.get_sampler(plan, pyramid, cache, device)
        extra_args = {
            "encoder_hidden_states": prompt_embeds,
            "negative_encoder_hidden_states": negative_prompt_embeds,
            "attention_kwargs": attention_kwargs,
        }
        if condition is not None:
            extra_args["image_condition"] = condition
        try:
            latents = sample(
                model,
                latents,
                grid=grid,
                extra_args=extra_args,
                callback=callback,
                disable=self._progress_disabled(),
                generator=generator,
            )
        finally:
            if isinstance(model, StageCachedVelocity):  # it enabled each stage's cache; remove the last
                model.disable()
        if condition is not None:  # Wan2.2-TI2V: the first latent frame is the clean image's
            latents = condition.with_clean_first_frame(latents)

        # 7. Decode
        if output_type == "latent":
            video = latents
        else:
            video = self.decode_latents(latents)
            video = self.video_processor.postprocess_video(video, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return WanPipelineOutput(frames=video)
