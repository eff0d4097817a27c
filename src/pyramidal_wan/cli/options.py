"""argparse `type=` functions for the CLI's numeric options, output paths and image files: a bad value is
argparse's one-line error (exit status 2) before any work, whichever sub-command takes it."""

from __future__ import annotations

import argparse
import math

from PIL import Image

from pyramidal_wan.utils.io import unwritable_reason


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text} must be at least {low}")
    return value


def finite_float(text: str) -> float:
    """A finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be at least 0")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def channel_list(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, e.g. 64,32,16."""
    try:
        channels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not all(c > 0 for c in channels):
        raise argparse.ArgumentTypeError(f"{text}: channel counts must be positive")
    return channels


def output_path(text: str) -> str:
    """A file or folder the command will write: nothing above it is a file and its nearest existing folder
    takes new entries (whether an existing output may be replaced is the command's own check)."""
    reason = unwritable_reason(text)
    if reason:
        raise argparse.ArgumentTypeError(f"{text}: {reason}; choose another path")
    return text


def image_file(text: str) -> Image.Image:
    """An image file, read whole and converted to RGB (a missing, unreadable or truncated file is refused)."""
    try:
        with Image.open(text) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise argparse.ArgumentTypeError(
            f"{text}: not a readable image ({reason}); give a PNG, JPEG or WebP file"
        ) from None
