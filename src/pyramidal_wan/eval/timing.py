"""Wall-clock time of one pipeline call split into its parts: text encoding, each pyramid stage, decoding."""

from __future__ import annotations

import time
from typing import Any

import torch

from pyramidal_wan.eval.latency import synchronize

TEXT = "text"
DECODE = "decode"


def stage_label(stage: int) -> str:
    """The key of a stage's time: 'stage 0' is full resolution."""
    return f"stage {int(stage)}"


class StageTimer:
    """Split the time of pipeline calls at the sampler's callbacks (a context manager around the calls).

    The clock starts with `start()`; the end of every text-encoder forward closes a "text" interval, every
    sampler callback (one per model evaluation) closes an interval of that evaluation's stage ("stage i"),
    and `stop()` closes the rest, the last update and the VAE decode ("decode"). Device work is
    synchronised before each clock read, so the parts add up to the call's time on accelerators too.

        with StageTimer(pipe) as timer:
            timer.start()
            pipe(prompt, callback=timer.callback)
            seconds = timer.stop()  # {"text": .., "stage 2": .., "stage 1": .., "stage 0": .., "decode": ..}
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.seconds: dict[str, float] = {}
        self._last: float | None = None
        self._hook = None

    def __enter__(self) -> StageTimer:
        self._hook = self.pipe.text_encoder.register_forward_hook(self._text_done)
        return self

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def start(self) -> None:
        """Reset the parts and start the clock."""
        self.seconds = {}
        self._last = time.perf_counter()

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
        self._mark(stage_label(info["stage"]), info["x"].device)

    def count_as(self, part: str, device: torch.device | None = None) -> None:
        """Close the running interval as `part`: work done inside a callback that is no part of sampling
        (e.g. a preview decode) is counted apart from the stages."""
        self._mark(part, device)

    def stop(self, device: torch.device | None = None) -> dict[str, float]:
        """Close the last interval as "decode" and return the parts (seconds, in the order they ran)."""
        self._mark(DECODE, device)
        self._last = None
        return dict(self.seconds)
