"""The diffusers pipeline (`PyramidalWanPipeline`), its sampling plans and video export."""

from pyramidal_wan.pipelines.export import export_video, to_uint8_video
from pyramidal_wan.pipelines.pipeline_pyramidal_wan import WAN21_NEGATIVE_PROMPT, PyramidalWanPipeline
from pyramidal_wan.pipelines.planning import SamplingPlan, plan_from_folder, plan_sampling

__all__ = [
    "WAN21_NEGATIVE_PROMPT",
    "PyramidalWanPipeline",
    "SamplingPlan",
    "export_video",
    "plan_from_folder",
    "plan_sampling",
    "to_uint8_video",
]
