"""The diffusers pipeline (`PyramidalWanPipeline`) and video export."""

from pyramidal_wan.pipelines.export import export_video, to_uint8_video
from pyramidal_wan.pipelines.pipeline_pyramidal_wan import (
    WAN21_NEGATIVE_PROMPT,
    PyramidalWanPipeline,
    SamplingPlan,
)

__all__ = ["WAN21_NEGATIVE_PROMPT", "PyramidalWanPipeline", "SamplingPlan", "export_video", "to_uint8_video"]
