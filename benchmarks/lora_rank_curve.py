"""The rank-quality curve of LoRA export: a tuned model's LoRA against its base, scored by ToyBench.

For each rank, `pyramidal-wan export --lora RANK` writes the LoRA of MODEL - BASE; the LoRA is then
applied to BASE's transformer and fused (diffusers' `load_lora_adapter` + `fuse_lora`) into a folder that
is MODEL with that transformer (so it samples with MODEL's pyramid config), and `pyramidal-wan evaluate`
scores the folders and MODEL itself on the same prompts and seeds. Prints each rank's kept energy; the
ToyBench table comes from evaluate.

    python benchmarks/lora_rank_curve.py --model models/toy/few-step --base models/toy/base \\
        --ranks 4 8 16 32 full --prompts 6 --heldout 4 --out runs/lora-rank
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from pyramidal_wan.models.loading import load_transformer
from pyramidal_wan.models.lora import LORA_WEIGHTS_NAME, export_lora, parse_rank
from pyramidal_wan.utils.io import atomic_path


def fused_folder(model: Path, base: Path, lora: Path, out: Path) -> Path:
    """MODEL's folder with BASE's transformer + the LoRA fused in (other components linked, not copied)."""
    transformer = load_transformer(base)
    transformer.load_lora_adapter(str(lora), prefix="transformer", weight_name=LORA_WEIGHTS_NAME)
    transformer.fuse_lora()
    transformer.unload_lora()
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for item in model.iterdir():
            if item.name == "transformer" or item.name.startswith("."):
                continue
            if item.is_dir():
                (tmp / item.name).symlink_to(item.resolve(), target_is_directory=True)
            else:
                shutil.copy2(item, tmp / item.name)
        transformer.save_pretrained(tmp / "transformer")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/toy/few-step")
    parser.add_argument("--base", default="models/toy/base")
    parser.add_argument("--ranks", nargs="+", default=["4", "8", "16", "32", "full"])
    parser.add_argument("--prompts", type=int, default=6, help="ToyBench train-split prompts")
    parser.add_argument("--heldout", type=int, default=4, help="ToyBench held-out prompts")
    parser.add_argument("--out", default="runs/lora-rank")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, base, out = Path(args.model), Path(args.base), Path(args.out)
    folders = []
    for value in args.ranks:
        exported = export_lora(model, base, parse_rank(value), out / f"lora-r{value}")
        extraction = exported.extraction
        print(
            f"rank {value}: {100 * extraction.kept_fraction:.2f}% of the delta's energy kept "
            f"({100 * extraction.kept_energy / extraction.linear_energy:.2f}% of the Linear part; "
            f"{len(extraction.left_out)} non-Linear parameters left out)",
            flush=True,
        )
        folders.append(fused_folder(model, base, exported.path.parent, out / f"{model.name}-lora-r{value}"))
    records = out / "toybench.jsonl"
    command = [sys.executable, "-m", "pyramidal_wan.cli", "evaluate", "--suite", "toy"]
    for folder in [model, *folders]:
        command += ["--model", str(folder)]
    command += ["--prompts", str(args.prompts), "--heldout", str(args.heldout), "--samples", "0"]
    command += ["--out", str(records), "--threads", str(args.threads)]
    print(" ".join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
