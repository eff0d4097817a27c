"""The bundled toy model family: where its members live in the repository and which one to use by default.

Members are diffusers Wan pipeline folders under `models/` in the repository root (issue 4). They are
listed best first; `generate` and `make demo` use the first that exists. Paths are relative to the
repository root, which is found from this file's location (`src/pyramidal_wan/models/bundled.py`), so they
work from an editable install or a source checkout.
"""

from __future__ import annotations

from pathlib import Path

from pyramidal_wan.errors import CheckpointError

REPO_ROOT = Path(__file__).resolve().parents[3]

# Best first: the few-step distilled member, the pyramidized one, the base model (`pyramidal-wan toy bundle`
# writes them; docs/toy.md has their recipes).
BUNDLED_MODELS: tuple[str, ...] = ("models/toy/few-step", "models/toy/pyramidal", "models/toy/base")
DEFAULT_MODEL = BUNDLED_MODELS[-1]  # the member every other one is made from


def is_model_folder(path: Path) -> bool:
    """True for a diffusers pipeline folder (it has a model_index.json)."""
    return (path / "model_index.json").is_file()


def bundled_model_path() -> Path:
    """The best bundled model folder that exists; a one-line `CheckpointError` saying how to make one if none.

    Returns:
        `Path`: the absolute path of the model folder.
    """
    for relative in BUNDLED_MODELS:
        path = REPO_ROOT / relative
        if is_model_folder(path):
            return path
    raise CheckpointError(
        f"no bundled model exists yet (not even {REPO_ROOT / DEFAULT_MODEL}): build it with the toy "
        "model recipes (`pyramidal-wan toy --help`, issue 4), or pass --model DIR with a diffusers Wan folder"
    )
