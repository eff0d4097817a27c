"""`prepare-data`: cache every stage's clean latent and the prompt embedding to safetensors shards.

Training never runs the VAE or the text encoder. A cache folder holds `manifest.json` (settings, shards,
skipped videos), `shard-NNNNN.safetensors` files with `latents.{stage}` (N, C, T, H, W) and
`prompt_embeds` (N, L, D), `empty_prompt.safetensors` (the embedding used for text dropout) and
`negative_prompt.safetensors` (the model's negative prompt, its text in the file's metadata: the
unconditional text of the distillation teachers' CFG, as the model samples with it).
Shards are written atomically in dataset order, so an interrupted run resumes after its last shard.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pyramidal_wan.data.dataset import read_records
from pyramidal_wan.data.stages import TEMPORAL_FILTERS, stage_videos
from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.conditioning import LatentEncoder, encode_clip_image
from pyramidal_wan.models.text import encode_prompts
from pyramidal_wan.pyramid import Pyramid, stage_geometry
from pyramidal_wan.utils.io import atomic_path, write_json
from pyramidal_wan.utils.video import read_video, to_pixel_tensor

MANIFEST = "manifest.json"
EMPTY_PROMPT = "empty_prompt.safetensors"
NEGATIVE_PROMPT = "negative_prompt.safetensors"
CONSTRUCTIONS = ("pixel", "latent")
# Image modes whose conditions a cache stores (`models.conditioning`). "first_frame" (TI2V) needs none: the
# first latent frame of a pixel-construction stage latent is that stage's image latent, as the pipeline makes
# it (`models.conditioning.first_frame_training_condition`).
CONDITIONED_MODES = ("clip", "channels")


@dataclass(frozen=True)
class CacheSettings:
    """What a cache was made with; a resume must match exactly."""

    num_frames: int
    height: int
    width: int
    num_stages: int = 3
    factors: tuple[tuple[int, int, int], ...] | None = None
    construction: str = "pixel"  # "pixel" (downsample RGB, then encode) or "latent" (R_down of stage 0)
    temporal_filter: str = "average"  # pixel pairs (1,2),(3,4),...: "average" or "subsample"
    dtype: str = "float16"  # storage dtype of latents and embeddings
    # Image-to-video models ("clip": Wan2.1-I2V, "channels": Wan2.2-I2V): per-stage first-frame conditions
    image_conditioning: str | None = None

    def __post_init__(self):
        if self.construction not in CONSTRUCTIONS:
            raise InputError(f"unknown construction {self.construction!r}; choose one of {CONSTRUCTIONS}")
        if self.temporal_filter not in TEMPORAL_FILTERS:
            raise InputError(f"unknown temporal filter {self.temporal_filter!r}; choose {TEMPORAL_FILTERS}")
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise InputError(f"cache dtype must be float16, bfloat16 or float32, got {self.dtype!r}")
        if self.image_conditioning not in (None, *CONDITIONED_MODES):
            raise InputError(
                f"image_conditioning {self.image_conditioning!r} must be None or one of {CONDITIONED_MODES}"
            )


def fit_video(frames, num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (3, num_frames, height, width) in [-1, 1].

    Takes the first `num_frames` frames, resizes (antialiased) to cover the target size, centre-crops.
    """
    if frames.shape[0] < num_frames:
        raise InputError(f"has {frames.shape[0]} frames, fewer than the {num_frames} needed")
    video = to_pixel_tensor(frames[:num_frames])  # (3, F, H, W)
    h, w = video.shape[2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        size = (max(height, math.ceil(h * scale)), max(width, math.ceil(w * scale)))
        video = F.interpolate(video.transpose(0, 1), size=size, mode="bilinear", antialias=True).transpose(
            0, 1
        )
        top, left = (size[0] - height) // 2, (size[1] - width) // 2
        video = video[:, :, top : top + height, left : left + width]
    return video.clamp(-1, 1)


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err.msg}); delete the cache folder to rebuild"
        ) from err


def read_negative_prompt(folder: Path) -> tuple[torch.Tensor | None, str | None]:
    """(embedding (L, D), text) of a cache's negative prompt, or (None, None) where it has none."""
    path = Path(folder) / NEGATIVE_PROMPT
    if not path.is_file():
        return None, None
    with safe_open(path, framework="pt") as f:
        return f.get_tensor("prompt_embeds"), (f.metadata() or {}).get("text", "")


def prepare_data(
    dataset: str | Path,
    out: str | Path,
    vae,
    tokenizer,
    text_encoder,
    settings: CacheSettings,
    shard_size: int = 256,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
    negative_prompt: str = "",
    image_encoder=None,
    image_processor=None,
) -> dict:
    """Cache stage latents and prompt embeddings of a video dataset (MP4s + captions.jsonl); resumable.

    `negative_prompt` is the model's (its pipeline's `default_negative_prompt`); a rerun on an older cache
    adds its embedding. Returns the manifest. Unreadable or too-short videos are skipped and listed in the
    manifest with the reason; nothing is dropped silently.

    With `settings.image_conditioning`, each video's first frame is also cached as an image-to-video model
    samples it: per stage, the encoded [stage frame 0, zeros...] ("conditions.{s}", made in pixel space at
    the stage's size whatever the construction), and for "clip" its CLIP tokens ("image_embeds", from
    `image_encoder` and `image_processor`). The mask is not stored: it follows from the latent shape.
    """
    if settings.image_conditioning == "clip" and (image_encoder is None or image_processor is None):
        raise InputError("image_conditioning 'clip' needs the model's image_encoder and image_processor")
    clip = (image_encoder, image_processor) if settings.image_conditioning == "clip" else None
    dataset, out = Path(dataset), Path(out)
    records = read_records(dataset)[:limit]
    geometry = stage_geometry(
        settings.num_frames,
        settings.height,
        settings.width,
        settings.num_stages,
        settings.factors,
        vae.config.scale_factor_temporal,
        vae.config.scale_factor_spatial,
    )
    pyramid = Pyramid.build(settings.num_stages, settings.factors)
    factors = [t.factors for t in pyramid.transfers]
    settings_dict = {**asdict(settings), "factors": [list(f) for f in factors]}
    if settings.image_conditioning is None:  # caches made before image conditioning have no such key
        del settings_dict["image_conditioning"]
    manifest = _read_manifest(out) or {
        "settings": settings_dict,
        "dataset": str(dataset.resolve()),
        "stage_latent_shapes": [[vae.config.z_dim, *g.latent] for g in geometry],
        "mask_channels": vae.config.scale_factor_temporal,  # Wan's I2V mask: pixel frames per latent frame
        "shards": [],
        "skipped": [],
    }
    if manifest["settings"] != settings_dict:
        raise InputError(f"{out} was prepared with other settings {manifest['settings']}; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    encoder = LatentEncoder(vae)
    dtype = getattr(torch, settings.dtype)
    if not (out / EMPTY_PROMPT).exists():
        with atomic_path(out / EMPTY_PROMPT) as tmp:
            save_file({"prompt_embeds": encode_prompts(tokenizer, text_encoder, [""])[0].to(dtype)}, tmp)
    if read_negative_prompt(out)[1] != negative_prompt:
        embeds = encode_prompts(tokenizer, text_encoder, [negative_prompt])[0].to(dtype)
        with atomic_path(out / NEGATIVE_PROMPT) as tmp:
            save_file({"prompt_embeds": embeds}, tmp, metadata={"text": negative_prompt})

    start = manifest["shards"][-1]["end"] if manifest["shards"] else 0
    bar = tqdm(total=len(records), initial=start, desc="prepare-data", unit="video", disable=not progress)
    for shard_start in range(start, len(records), shard_size):
        chunk = records[shard_start : shard_start + shard_size]
        tensors, skipped = _encode_chunk(
            dataset, chunk, settings, encoder, pyramid, tokenizer, text_encoder, batch_size, bar, clip
        )
        name = f"shard-{len(manifest['shards']):05d}.safetensors"
        count = len(tensors["prompt_embeds"])
        if count:
            with atomic_path(out / name) as tmp:
                save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, tmp)
        manifest["shards"].append(
            {
                "file": name if count else None,
                "start": shard_start,
                "end": shard_start + len(chunk),
                "count": count,
            }
        )
        manifest["skipped"].extend(skipped)
        write_json(out / MANIFEST, manifest)
    bar.close()
    return manifest


def derive_latent_cache(source: str | Path, out: str | Path) -> dict:
    """A latent-construction cache (stage s = R_down^s of stage 0) made from a pixel cache, with no VAE.

    The ablation's other arm (METHOD.md 4.3) shares the pixel cache's videos, captions and stage-0 latents;
    only the lower stages differ. They are downsampled from the stored (float16) stage-0 latents, which
    differs from `prepare-data --construction latent` only by that storage rounding. Returns the manifest.
    """
    source, out = Path(source), Path(out)
    manifest = _read_manifest(source)
    if manifest is None:
        raise CheckpointError(f"{source} has no {MANIFEST}; run `pyramidal-wan prepare-data` first")
    settings = dict(manifest["settings"])
    if settings["construction"] != "pixel":
        raise InputError(f"{source} is a {settings['construction']}-construction cache; pass a pixel cache")
    settings["construction"] = "latent"
    derived = {**manifest, "settings": settings, "derived_from": str(source.resolve())}
    existing = _read_manifest(out)
    if existing is not None:
        if existing != derived:
            raise InputError(f"{out} already holds another cache; choose another --out")
        return existing
    factors = [tuple(f) for f in settings["factors"]]
    pyramid = Pyramid.build(settings["num_stages"], factors)
    dtype = getattr(torch, settings["dtype"])
    out.mkdir(parents=True, exist_ok=True)
    for shard in manifest["shards"]:
        if not shard["file"]:
            continue
        tensors = load_file(source / shard["file"])
        full = tensors["latents.0"].float()
        for stage in range(1, settings["num_stages"]):
            tensors[f"latents.{stage}"] = pyramid.down_to(full, stage).to(dtype).contiguous()
        with atomic_path(out / shard["file"]) as tmp:
            save_file(tensors, tmp)
    shutil.copy2(source / EMPTY_PROMPT, out / EMPTY_PROMPT)
    if (source / NEGATIVE_PROMPT).is_file():
        shutil.copy2(source / NEGATIVE_PROMPT, out / NEGATIVE_PROMPT)
    write_json(out / MANIFEST, derived)  # last: a folder with a manifest is complete
    return derived


def _encode_chunk(
    dataset, chunk, settings, encoder, pyramid, tokenizer, text_encoder, batch_size, bar, clip=None
):
    """Stage latents (pixel or latent construction), embeddings and image conditions of one shard's
    records (`clip`: the CLIP image encoder and processor, or None)."""
    per_stage, embeds, skipped = [[] for _ in range(settings.num_stages)], [], []
    conditions, image_embeds = [[] for _ in range(settings.num_stages)], []
    for i in range(0, len(chunk), batch_size):
        videos, captions = [], []
        for record in chunk[i : i + batch_size]:
            try:
                frames = read_video(dataset / record["video"])
                videos.append(fit_video(frames, settings.num_frames, settings.height, settings.width))
                captions.append(record["caption"])
            except InputError as err:
                skipped.append({"video": record["video"], "reason": str(err)})
            bar.update(1)
        if not videos:
            continue
        batch = torch.stack(videos)  # (B, 3, F, H, W)
        pixel_stages = stage_videos(batch, [t.factors for t in pyramid.transfers], settings.temporal_filter)
        if settings.image_conditioning is not None:
            for stage, video in enumerate(pixel_stages):  # [frame 0, zeros...] at the stage's size
                first = torch.cat([video[:, :, :1], torch.zeros_like(video[:, :, 1:])], dim=2)
                conditions[stage].append(encoder(first))
            if clip is not None:
                image_embeds.append(encode_clip_image(*clip, first_frames(batch), torch.device("cpu")))
        if settings.construction == "pixel":
            latents = [encoder(v) for v in pixel_stages]
        else:
            full = encoder(batch)
            latents = [pyramid.down_to(full, s) for s in range(settings.num_stages)]
        for stage, latent in enumerate(latents):
            per_stage[stage].append(latent)
        embeds.append(encode_prompts(tokenizer, text_encoder, captions).float())
    if not embeds:
        return {"prompt_embeds": torch.zeros(0)}, skipped
    tensors = {f"latents.{s}": torch.cat(x) for s, x in enumerate(per_stage)}
    tensors["prompt_embeds"] = torch.cat(embeds)
    if settings.image_conditioning is not None:
        tensors.update({f"conditions.{s}": torch.cat(x) for s, x in enumerate(conditions)})
    if image_embeds:
        tensors["image_embeds"] = torch.cat(image_embeds)
    return tensors, skipped


def first_frames(videos: torch.Tensor) -> list[Image.Image]:
    """The first frames of pixel videos (B, 3, F, H, W) in [-1, 1] as RGB images (what CLIP is given)."""
    frames = ((videos[:, :, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, H, W)
    return [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]


class CachedLatents(torch.utils.data.Dataset):
    """Items of a prepared cache: {"latents": [stage 0 .. S-1 tensors], "prompt_embeds": (L, D)}.

    Shards are read once (safetensors, no pickle) and kept in memory; the toy caches are a few hundred MB.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = _read_manifest(self.folder)
        if manifest is None:
            raise CheckpointError(f"{self.folder} has no {MANIFEST}; run `pyramidal-wan prepare-data` first")
        self.manifest = manifest
        self.num_stages = manifest["settings"]["num_stages"]
        shards = [load_file(self.folder / s["file"]) for s in manifest["shards"] if s["file"]]
        if not shards:
            raise CheckpointError(f"{self.folder} holds no cached videos")
        self.latents = [torch.cat([s[f"latents.{i}"] for s in shards]) for i in range(self.num_stages)]
        self.prompt_embeds = torch.cat([s["prompt_embeds"] for s in shards])
        # Image-to-video caches: per-stage first-frame conditions, CLIP tokens ("clip"), the mask's channels
        self.image_conditioning = manifest["settings"].get("image_conditioning")
        self.mask_channels = manifest.get("mask_channels")
        self.conditions = None
        if self.image_conditioning is not None:
            self.conditions = [
                torch.cat([s[f"conditions.{i}"] for s in shards]) for i in range(self.num_stages)
            ]
        self.image_embeds = (
            torch.cat([s["image_embeds"] for s in shards]) if "image_embeds" in shards[0] else None
        )
        self.empty_prompt = load_file(self.folder / EMPTY_PROMPT)["prompt_embeds"]
        # (L, D) and its text, or (None, None) for a cache made before negative prompts were cached
        self.negative_prompt, self.negative_prompt_text = read_negative_prompt(self.folder)

    def __len__(self) -> int:
        return len(self.prompt_embeds)

    def __getitem__(self, index: int) -> dict:
        return {"latents": [x[index] for x in self.latents], "prompt_embeds": self.prompt_embeds[index]}

    def batch(self, indices: torch.Tensor) -> dict:
        """A batch by index tensor, without a DataLoader: float32 stage latents and embeddings, and for an
        image-to-video cache the stage conditions and CLIP tokens (None where the cache has none)."""
        batch = {
            "latents": [x[indices].float() for x in self.latents],
            "prompt_embeds": self.prompt_embeds[indices].float(),
        }
        if self.conditions is not None:
            batch["image_conditions"] = [x[indices].float() for x in self.conditions]
            batch["image_embeds"] = None if self.image_embeds is None else self.image_embeds[indices].float()
            batch["mask_channels"] = self.mask_channels
        return batch
