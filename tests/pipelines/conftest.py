"""Session fixtures: one set of tiny random components and a 3-stage pipeline over them."""

import pytest
from pipeline_helpers import build_components, build_pipeline

from pyramidal_wan.pyramid import PyramidConfig


@pytest.fixture(scope="session")
def components():
    return build_components()


@pytest.fixture(scope="session")
def pipe(components):
    return build_pipeline(PyramidConfig(), components=components)
