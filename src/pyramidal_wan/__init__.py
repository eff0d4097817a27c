"""pyramidal-wan: make a pretrained Wan2.1 video diffusion model pyramidal, then few-step."""

__version__ = "0.1.0"
