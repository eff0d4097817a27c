"""Reading a toy video: background fit, pixel labels, pattern-aware object masks and their statistics
(steps 1-3 of the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pyramidal_wan.errors import InputError
from pyramidal_wan.toy.world import (
    COLOURS,
    PATTERN_SHADE,
    WorldConfig,
)

CLASS_NAMES: tuple[str, ...] = (*COLOURS, "other")

_PALETTE = np.asarray(list(COLOURS.values()), np.float32)  # (6, 3)

_OTHER = len(COLOURS)

# A pixel this far (RGB L2) from the background is foreground; the weakest colour/background contrast in
# the world is 120 (see world.COLOURS), so even a 1/3 blend at a blurred edge passes.
FOREGROUND_DISTANCE = 40.0

# Largest blend residual (RGB L2) for a palette colour. A pure palette colour fits every other palette
# colour with a residual >= 101 on every world background, and the best fit wins, so labels stay
# unambiguous; 60 tolerates the desaturation and drift of a small VAE.
FIT_RESIDUAL = 60.0

# Blobs smaller than this fraction of the world's smallest object (a triangle, 2 h_min^2) are specks.
MIN_AREA_FRACTION = 0.4

# Blobs larger than this factor times the world's largest object (a square, (2 h_max)^2) are not objects
# (the "other" class of a noise video covers most of the frame, for example).
MAX_AREA_FACTOR = 2.0

# Components less compact than this (area / (4 pi sqrt(det covariance)), see `_component_stats`) are not
# objects: stringy or sponge-like blobs, such as the off-palette pixels of a noise video.
MIN_COMPACTNESS = 0.6

# Closed components with a smaller share of pixels that fit their class (core or dark phase) are not
# objects: closing fills only the gaps of a pattern, while closing the sparse palette pixels of a noise
# video makes blobs that are mostly filler. Measured on 20 rendered clips and 5 noise videos: >= 0.67 and
# <= 0.33.
MIN_FIT_FRACTION = 0.5

# Candidate background slopes as the total change from the top to the bottom row in RGB levels (world
# gradients change by 40): a coarse grid, then a fine one around the coarse winner.
_BACKGROUND_LIFTS = np.arange(-120.0, 121.0, 20.0, dtype=np.float32)

_BACKGROUND_LIFTS_FINE = np.arange(-10.0, 11.0, 2.0, dtype=np.float32)


@dataclass(frozen=True)
class VideoAnalysis:
    """What `analyse_video` reads from one video; C = 7 classes (the six palette colours, then "other")."""

    background: np.ndarray  # float32 (F, H, 3): fitted background colour of each row
    foreground: np.ndarray  # bool (F, H, W): pixels far from the background
    masks: np.ndarray  # bool (F, C, H, W): the main (largest) object of each class, empty if none
    area: np.ndarray  # float (F, C): area of the main object in px, 0 where none
    centroid: np.ndarray  # float (F, C, 2): its centroid (x, y) in px, NaN where none
    colour: np.ndarray  # float (F, C, 3): its mean RGB, NaN where none
    components: np.ndarray  # int (F, C): number of objects (object-like components) of each class
    present: np.ndarray  # bool (F, C): the class has at least one object in that frame
    blocks: np.ndarray  # float32 (F, H // B, W // B, 3): frames averaged over B x B blocks, B = side / 16


def check_video(video) -> np.ndarray:
    """Return `video` as a uint8 (F, H, W, 3) array, or raise `InputError` naming what is wrong."""
    array = np.asarray(video)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise InputError(
            f"ToyBench takes uint8 videos of shape (F, H, W, 3), got {array.dtype} {array.shape}; "
            "convert a [-1, 1] tensor with pyramidal_wan.utils.video.to_uint8_frames"
        )
    return array


def world_for(video: np.ndarray) -> WorldConfig:
    """The default world at this video's frame count and size (relative sizes and speeds unchanged)."""
    frames, height, width, _ = video.shape
    return WorldConfig(num_frames=frames, height=height, width=width)


def block_size(height: int, width: int) -> int:
    """Side of the pooling blocks used for background stability and frame differences: side/16, >= 2."""
    return max(2, min(height, width) // 16)


def _block_reduce(array: np.ndarray, block: int, ufunc: np.ufunc) -> np.ndarray:
    """Fold (F, H, W, ...) over non-overlapping block x block tiles with a binary ufunc (np.add,
    np.logical_or); a ragged edge is dropped. Folding tile offsets one by one is several times faster than
    a numpy reduction over two short, strided axes."""
    frames, height, width = array.shape[:3]
    hb, wb = height // block, width // block
    tiles = array[:, : hb * block, : wb * block].reshape(frames, hb, block, wb, block, *array.shape[3:])
    out = tiles[:, :, 0, :, 0].copy()
    for i in range(block):
        for j in range(block):
            if i or j:
                ufunc(out, tiles[:, :, i, :, j], out=out)
    return out


def fit_background(frames: np.ndarray) -> np.ndarray:
    """Per-frame background colour of each row, float32 (F, H, 3), modelled as a line in the row index.

    Row medians ignore objects (they cover under half of a row); the line is fitted by least median of
    absolute deviations over candidate slopes (coarse `_BACKGROUND_LIFTS`, then a finer grid around the
    best) and refined by least squares on the rows within 3 robust sigmas of it.
    """
    rows = np.median(np.moveaxis(frames, 2, -1), axis=-1).transpose(0, 2, 1)  # (F, 3, H)
    height = rows.shape[-1]
    y = np.arange(height, dtype=np.float32) - (height - 1) / 2.0  # centred, so intercept = mean level
    per_lift = 1.0 / max(height - 1, 1)
    best = np.zeros(rows.shape[:2] + (1,), np.float32)  # (F, 3, 1) best lift so far
    for lifts in (_BACKGROUND_LIFTS, _BACKGROUND_LIFTS_FINE):
        slope = (best + lifts) * per_lift  # (F, 3, S)
        detrended = rows[:, :, None, :] - slope[..., None] * y  # (F, 3, S, H)
        intercept = np.median(detrended, axis=-1)  # (F, 3, S)
        spread = np.median(np.abs(detrended - intercept[..., None]), axis=-1)  # (F, 3, S)
        pick = spread.argmin(axis=-1)[..., None]
        best = np.take_along_axis(best + lifts, pick, axis=-1)
        level = np.take_along_axis(intercept, pick, axis=-1)
        scale = 1.4826 * np.take_along_axis(spread, pick, axis=-1)
    inlier = np.abs(rows - level - best * per_lift * y) <= np.maximum(3.0 * scale, 2.0)  # (F, 3, H)
    # Least squares for (level, slope) on the inlier rows.
    w = inlier.astype(np.float32)
    n = w.sum(-1, keepdims=True).clip(min=1.0)
    y_mean = (w * y).sum(-1, keepdims=True) / n
    r_mean = (w * rows).sum(-1, keepdims=True) / n
    var = (w * (y - y_mean) ** 2).sum(-1, keepdims=True)
    cov = (w * (y - y_mean) * (rows - r_mean)).sum(-1, keepdims=True)
    slope = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)
    fitted = r_mean + slope * (y - y_mean)  # (F, 3, H)
    return fitted.transpose(0, 2, 1).astype(np.float32)


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion over the last two axes (outside the frame counts as empty)."""
    p = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    rows = p[..., :, :-2] & p[..., :, 1:-1] & p[..., :, 2:]
    return rows[..., :-2, :] & rows[..., 1:-1, :] & rows[..., 2:, :]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation over the last two axes."""
    p = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    rows = p[..., :, :-2] | p[..., :, 1:-1] | p[..., :, 2:]
    return rows[..., :-2, :] | rows[..., 1:-1, :] | rows[..., 2:, :]


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a (2 radius + 1) square over the last two axes: fills gaps up to 2 radius px
    wide. It works on a frame padded by `radius`, so an object touching the border keeps its edge pixels
    and the gap between an object and the border is not filled."""
    pad = [(0, 0)] * (mask.ndim - 2) + [(radius, radius), (radius, radius)]
    out = np.pad(mask, pad)
    for _ in range(radius):
        out = _dilate(out)
    for _ in range(radius):
        out = _erode(out)
    return out[..., radius:-radius, radius:-radius]


def pattern_gap_radius(config: WorldConfig) -> int:
    """Closing radius (px) that bridges a pattern's dark phase: half a period wide at most, so
    ceil(period / 4) (2 px at 64x64)."""
    return max(1, math.ceil(config.pattern_period / 4.0))


def pattern_reach(config: WorldConfig) -> int:
    """How far (px) a pattern's dark phase reaches from the object's colour: half a period, rounded up (3 px
    at 64x64), where a dark band lies along the object's edge."""
    return max(1, math.ceil(config.pattern_period / 2.0))


# Neighbour offsets (row, column) that, with their mirror images, make up the 8-neighbourhood.
_HALF_NEIGHBOURHOOD = ((0, 1), (1, 0), (1, 1), (1, -1))


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of bool masks (N, H, W): int64 labels, -1 outside, one label per component.

    Hook-and-compress on the pixel graph: every edge pulls both ends' roots to the smaller root
    (`np.minimum.at`), then pointer jumping flattens the trees. It converges in a few rounds even for
    snakes and sponges, where propagating labels pixel by pixel would take their whole length.
    """
    n, h, w = mask.shape
    index = np.arange(n * h * w).reshape(n, h, w)
    ends = []
    for dy, dx in _HALF_NEIGHBOURHOOD:
        src = (slice(None), slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
        dst = (slice(None), slice(dy, h), slice(max(0, dx), w - max(0, -dx)))
        both = mask[src] & mask[dst]
        ends.append((index[src][both], index[dst][both]))
    u = np.concatenate([e[0] for e in ends])
    v = np.concatenate([e[1] for e in ends])
    parent = np.arange(n * h * w)
    while True:
        pu, pv = parent[u], parent[v]
        if np.array_equal(pu, pv):
            break
        np.minimum.at(parent, pu, pv)
        np.minimum.at(parent, pv, pu)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return np.where(mask, parent.reshape(n, h, w), -1)


def _area_range(config: WorldConfig) -> tuple[float, float]:
    """(smallest, largest) object area in px that counts as an object, from the world's size ranges."""
    h_min = min(config.size_range[0], config.pair_size_range[0]) * config.side
    h_max = max(config.size_range[1], config.pair_size_range[1]) * config.side
    return MIN_AREA_FRACTION * 2.0 * h_min**2, MAX_AREA_FACTOR * (2.0 * h_max) ** 2


def label_pixels(
    frames: np.ndarray, background: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class masks by background/palette blend fits: the core bool (F, C, H, W) (blends of a palette colour
    with alpha >= 0.5, and the off-palette "other" class), the dark phase bool (F, C, H, W) (pixels within
    `radius` of a palette core, no palette core themselves, that are blends of a palette colour's pattern
    shade with alpha >= 0.5) and the foreground (F, H, W)."""
    d = frames - background[:, :, None, :]  # (F, H, W, 3)
    foreground = np.einsum("fhwc,fhwc->fhw", d, d) >= FOREGROUND_DISTANCE**2
    shape = (frames.shape[0], len(CLASS_NAMES), *frames.shape[1:3])
    core, dark = np.zeros(shape, bool), np.zeros(shape, bool)
    # Only foreground pixels can belong to a class's core: alpha >= 0.5 on a contrast of >= 120 already
    # puts a pixel 60 from the background. Fitting them alone makes the cost follow the objects' area.
    f, y, x = np.nonzero(foreground)
    best, member, fits = _palette_fit(d[f, y, x], background[f, y], 1.0)
    core[f[member], best[member], y[member], x[member]] = True
    core[f[~fits], _OTHER, y[~fits], x[~fits]] = True
    # A dark phase can sit close to the background (the world keeps it >= 40 from it only at full
    # coverage), so it is looked for next to a core, foreground or not.
    near = core[:, :_OTHER].any(1)
    for _ in range(radius):
        near = _dilate(near)
    f, y, x = np.nonzero(near & ~core[:, :_OTHER].any(1))
    best, member, _ = _palette_fit(d[f, y, x], background[f, y], PATTERN_SHADE)
    dark[f[member], best[member], y[member], x[member]] = True
    core[:, _OTHER] &= ~dark.any(1)  # a dark phase that fits no full colour is not off-palette
    return core, dark, foreground


def _palette_fit(d: np.ndarray, background: np.ndarray, shade: float) -> tuple[np.ndarray, ...]:
    """Best blend of each pixel offset d (P, 3) from its background (P, 3) towards shade x a palette colour,
    p = b + alpha (shade c - b): (best colour (P,), member (P,): it fits with alpha >= 0.5, fits (P,): some
    colour fits with alpha in [0.25, 1.5] and residual <= FIT_RESIDUAL)."""
    e = shade * _PALETTE[None] - background[:, None, :]  # (P, 6, 3)
    dots = np.einsum("pc,pkc->pk", d, e)
    alpha = dots / np.maximum(np.einsum("pkc,pkc->pk", e, e), 1e-6)
    residual2 = (d * d).sum(-1, keepdims=True) - alpha * dots  # |d - alpha e|^2, alpha e projects d
    ok = (alpha >= 0.25) & (alpha <= 1.5) & (residual2 <= FIT_RESIDUAL**2)
    best = np.where(ok, residual2, np.inf).argmin(-1)
    fits = ok.any(-1)
    member = fits & (np.take_along_axis(alpha, best[:, None], -1)[:, 0] >= 0.5)
    return best, member, fits


def analyse_video(video, config: WorldConfig | None = None) -> VideoAnalysis:
    """Background, foreground and per-class objects of one uint8 (F, H, W, 3) video (module docstring)."""
    video = check_video(video)
    config = config or world_for(video)
    frames = video.astype(np.float32)
    num_frames, height, width, _ = video.shape
    background = fit_background(frames)
    radius = pattern_gap_radius(config)
    raw, dark, foreground = label_pixels(frames, background, pattern_reach(config))
    lo, hi = _area_range(config)
    # A pattern's dark phase is not the object's colour: pixels that fit a colour's pattern shade join that
    # colour's object where they touch it (within `pattern_reach`), and closing bridges what is left of
    # the pattern, so a patterned object is one solid mask, as a person sees it; opening then removes
    # speckle. Only the core counts towards the smallest object area, and off-palette pixels inside a
    # closed palette mask are a dark phase, not another object.
    candidates = np.flatnonzero(raw.sum(axis=(-2, -1)).max(0) >= MIN_FIT_FRACTION * lo)
    palette = candidates < _OTHER
    closed = raw[:, candidates]
    near = closed[:, palette]
    for _ in range(pattern_reach(config)):
        near = _dilate(near)
    closed[:, palette] = _close(closed[:, palette] | (dark[:, candidates[palette]] & near), radius)
    if not palette.all():
        closed[:, ~palette] &= ~closed[:, palette].any(1, keepdims=True)
    opened = _dilate(_erode(closed))  # (F, K, H, W)
    labels = label_components(opened.reshape(-1, height, width))  # (F K, H, W), slot = f K + k
    fitted = (raw | dark)[:, candidates].reshape(-1, height, width)
    comp = _component_stats(labels, frames, fitted, len(candidates))
    is_object = (
        (comp["area"] >= lo)
        & (comp["area"] <= hi)
        & (comp["compactness"] >= MIN_COMPACTNESS)
        & (comp["fit_fraction"] >= MIN_FIT_FRACTION)
    )

    num_slots = num_frames * len(candidates)
    count = np.bincount(comp["slot"][is_object], minlength=num_slots)
    # The main object of each (frame, class) slot is its largest object-like component.
    order = np.flatnonzero(is_object)[np.lexsort((-comp["area"][is_object], comp["slot"][is_object]))]
    main = order[np.unique(comp["slot"][order], return_index=True)[1]]  # one component per occupied slot
    chosen = np.full(num_slots, -2)  # -2 matches no pixel label
    chosen[comp["slot"][main]] = comp["label"][main]

    shape = (num_frames, len(CLASS_NAMES))
    area, components = np.zeros(shape), np.zeros(shape, np.int64)
    centroid, colour = np.full((*shape, 2), np.nan), np.full((*shape, 3), np.nan)
    masks = np.zeros((*shape, height, width), bool)
    f, k = np.divmod(comp["slot"][main], max(len(candidates), 1))
    cls = candidates[k]
    area[f, cls] = comp["area"][main]
    centroid[f, cls] = comp["centroid"][main]
    colour[f, cls] = comp["colour"][main]
    components[:, candidates] = count.reshape(num_frames, len(candidates))
    masks[:, candidates] = (labels == chosen[:, None, None]).reshape(
        num_frames, len(candidates), height, width
    )
    block = block_size(height, width)
    blocks = _block_reduce(frames, block, np.add) / block**2
    return VideoAnalysis(
        background, foreground, masks, area, centroid, colour, components, components > 0, blocks
    )


def _component_stats(
    labels: np.ndarray, frames: np.ndarray, fitted: np.ndarray, per_frame: int
) -> dict[str, np.ndarray]:
    """Per connected component of `labels` (N = F x per_frame slots, H, W): its slot, label, area,
    centroid (x, y), mean colour of `frames` (F, H, W, 3), compactness and fit fraction (the share of its
    pixels set in `fitted` (N, H, W), the class's core and dark phase before closing).

    Compactness = area / (4 pi sqrt(det covariance)) is 1 for a disc, 0.95 for a square, 0.83 for the
    world's triangle and far lower for ragged or stringy blobs.
    """
    slot, ys, xs = np.nonzero(labels >= 0)
    ids, inverse = np.unique(labels[slot, ys, xs], return_inverse=True)
    if len(ids) == 0:
        empty = np.zeros(0)
        return {
            "slot": empty.astype(np.int64),
            "label": empty.astype(np.int64),
            "area": empty,
            "centroid": np.zeros((0, 2)),
            "colour": np.zeros((0, 3)),
            "compactness": empty,
            "fit_fraction": empty,
        }
    area = np.bincount(inverse).astype(np.float64)
    x, y = xs + 0.5, ys + 0.5

    def mean(values):
        return np.bincount(inverse, weights=values) / area

    cx, cy = mean(x), mean(y)
    var_x = mean((x - cx[inverse]) ** 2) + 1.0 / 12.0  # + the extent of a pixel
    var_y = mean((y - cy[inverse]) ** 2) + 1.0 / 12.0
    cov_xy = mean((x - cx[inverse]) * (y - cy[inverse]))
    pixels = frames[slot // max(per_frame, 1), ys, xs]  # (P, 3)
    return {
        "slot": ids // (labels.shape[1] * labels.shape[2]),
        "label": ids,
        "area": area,
        "centroid": np.stack([cx, cy], -1),
        "colour": np.stack([mean(pixels[:, c]) for c in range(3)], -1),
        "compactness": area / (4.0 * math.pi * np.sqrt(np.maximum(var_x * var_y - cov_xy**2, 1e-6))),
        "fit_fraction": mean(fitted[slot, ys, xs].astype(np.float64)),
    }
