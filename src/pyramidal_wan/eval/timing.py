"""Wall-clock time of one pipeline call split into its parts: text encoding, each pyramid stage, decoding.

The one description of these parts: their names (`TEXT`, `stage_label`, `DECODE`), their order
(`order_parts`) and their table (`parts_table`), used by `bench`, `evaluate`'s records and the report.
Next to the parts, `StageTimer` measures the time spent inside the transformer's forwards, so a table
shows how much of each stage is the model and how much the sampler around it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import torch

from pyramidal_wan.eval.latency import synchronize

TEXT = "text"
DECODE = "decode"
TRANSFORMER = "transformer"  # the column of the seconds inside transformer forwards (all stages)


def stage_label(stage: int) -> str:
    """The key of a stage's time: 'stage 0' is full resolution."""
    return f"stage {int(stage)}"


class StageTimer:
    """Split the time of pipeline calls at the sampler's callbacks (a context manager around the calls).

    The clock starts with `start()`; the end of every text-encoder forward closes a "text" interval, every
    sampler callback (one per model evaluation) closes an interval of that evaluation's stage ("stage i"),
    and `stop()` closes the rest, the last update and the VAE decode ("decode"). Device work is
    synchronised before each clock read, so the parts add up to the call's time on accelerators too.
    `transformer` holds the seconds inside the transformer forwards of each stage (part of that stage's
    time; with a step cache, a skipped forward still counts what it ran).

        with StageTimer(pipe) as timer:
            timer.start()
            pipe(prompt, callback=timer.callback)
            seconds = timer.stop()  # {"text": .., "stage 2": .., "stage 1": .., "stage 0": .., "decode": ..}
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.seconds: dict[str, float] = {}
        self.transformer: dict[str, float] = {}
        self._last: float | None = None
        self._hooks = []
        self._depth = 0  # nested model calls (a PPF wrapper around its base) are timed once, outermost
        self._forward_start = 0.0
        self._forward_seconds = 0.0  # inside forwards since the last callback

    def __enter__(self) -> StageTimer:
        self._hooks = [self.pipe.text_encoder.register_forward_hook(self._text_done)]
        models = {id(m): m for m in (self.pipe.ppf, self.pipe.transformer, self.pipe.transformer_2) if m}
        for model in models.values():
            self._hooks.append(model.register_forward_pre_hook(self._forward_begins))
            self._hooks.append(model.register_forward_hook(self._forward_ends))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def start(self) -> None:
        """Reset the parts and start the clock."""
        self.seconds, self.transformer = {}, {}
        self._depth, self._forward_seconds = 0, 0.0
        self._last = time.perf_counter()

    def _forward_begins(self, module, args) -> None:
        if self._depth == 0 and self._last is not None:
            synchronize(module.device)
            self._forward_start = time.perf_counter()
        self._depth += 1

    def _forward_ends(self, module, args, output) -> None:
        self._depth -= 1
        if self._depth == 0 and self._last is not None:
            synchronize(module.device)
            self._forward_seconds += time.perf_counter() - self._forward_start

    def _mark(self, part: str, device: torch.device | None) -> None:
        if self._last is None:
            return  # a call outside start() / stop()
        if device is not None:
            synchronize(device)
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - self._last
        self._last = now

    def _text_done(self, module, args, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", None)
        self._mark(TEXT, hidden.device if isinstance(hidden, torch.Tensor) else None)

    def callback(self, info: dict[str, Any]) -> None:
        """The pipeline `callback`: closes the interval of the model evaluation that just ran."""
        part = stage_label(info["stage"])
        self._mark(part, info["x"].device)
        self.transformer[part] = self.transformer.get(part, 0.0) + self._forward_seconds
        self._forward_seconds = 0.0

    def count_as(self, part: str, device: torch.device | None = None) -> None:
        """Close the running interval as `part`: work done inside a callback that is no part of sampling
        (e.g. a preview decode) is counted apart from the stages."""
        self._mark(part, device)

    def stop(self, device: torch.device | None = None) -> dict[str, float]:
        """Close the last interval as "decode" and return the parts (seconds, in the order they ran)."""
        self._mark(DECODE, device)
        self._last = None
        return dict(self.seconds)


def order_parts(parts: dict) -> dict:
    """`parts` in the order they run: text, stages from the lowest resolution (highest index) to full,
    decode, then any others by name."""

    def rank(part: str):
        if part == TEXT:
            return (0, 0)
        match = re.fullmatch(r"stage (\d+)", part)
        if match:
            return (1, -int(match.group(1)))
        return (2, 0) if part == DECODE else (3, part)

    return {p: parts[p] for p in sorted(parts, key=rank)}


def parts_table(runs: Sequence[dict], digits: int = 3) -> tuple[list[str], list[list[str]]]:
    """(header, rows): seconds of each part, their total and the transformer's share, one row per run.

    A run is a dict with "name" (the row's first cells, a list of strings), "stage_seconds" (part ->
    seconds) and optionally "transformer_seconds" (seconds inside transformer forwards, "-" if absent).
    """
    parts = list(order_parts({p: None for r in runs for p in r["stage_seconds"]}))
    rows = []
    for r in runs:
        model = r.get("transformer_seconds")
        cells = [f"{r['stage_seconds'][p]:.{digits}f}" if p in r["stage_seconds"] else "-" for p in parts]
        total = f"{sum(r['stage_seconds'].values()):.{digits}f}"
        rows.append([*r["name"], *cells, total, "-" if model is None else f"{model:.{digits}f}"])
    return [*parts, "total", TRANSFORMER], rows
