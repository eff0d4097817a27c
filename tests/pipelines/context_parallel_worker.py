"""Run under torchrun by test_context_parallel.py: one pipeline call with the transformer split over the
processes by diffusers' context parallelism; rank 0 saves the latents.

    torchrun --nproc_per_node 2 context_parallel_worker.py FOLDER OUT.pt MODE SCHEDULE

Diffusers 0.42 picks each rank's device as `rank % torch.accelerator.device_count()`, which divides by zero
on a machine without an accelerator; this worker (and only it) answers 1 there, so the rest of the path
(split hooks, all-to-all over gloo, the pyramid's stages) runs on CPU exactly as it would on GPUs.
"""

import sys

import torch
import torch.distributed as dist

from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pipelines.parallel import enable_context_parallel


def main(folder: str, out: str, mode: str, schedule: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    if torch.accelerator.device_count() == 0:
        torch.accelerator.device_count = lambda: 1
    pipe = PyramidalWanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    enable_context_parallel(pipe.transformer, mode, dist.get_world_size())
    latents = pipe(
        "a red circle", schedule=schedule, output_type="latent", generator=torch.Generator().manual_seed(0)
    ).frames
    if dist.get_rank() == 0:
        torch.save(latents, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
