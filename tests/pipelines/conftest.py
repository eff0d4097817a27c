"""Session fixtures: one set of tiny random components and a 3-stage pipeline over them."""

import pytest
from pipeline_helpers import SIZE, build_components

from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pyramid import PyramidConfig


@pytest.fixture(scope="session")
def components():
    return build_components()


@pytest.fixture(scope="session")
def pipe(components):
    pipe = PyramidalWanPipeline(
        **components,
        pyramid_config=PyramidConfig(),
        default_num_frames=SIZE["num_frames"],
        default_height=SIZE["height"],
        default_width=SIZE["width"],
        default_negative_prompt="",
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
