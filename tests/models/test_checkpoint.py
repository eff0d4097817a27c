"""pyramid_config.json: round trip, plain-model default, and one-line errors for broken files."""

import json

import pytest
from helpers import nondefault_pyramid_config

from pyramidal_wan.errors import CheckpointError
from pyramidal_wan.models.checkpoint import (
    PLAIN_MODEL_CONFIG,
    PYRAMID_CONFIG_NAME,
    load_pyramid_config,
    pyramid_config_or_plain,
    save_pyramid_config,
)


def test_round_trip(tmp_path):
    config = nondefault_pyramid_config(guidance_scale=1.0)
    path = save_pyramid_config(tmp_path, config)
    assert path == tmp_path / PYRAMID_CONFIG_NAME
    assert json.loads(path.read_text())["factors"] == [[1, 2, 2]]
    assert load_pyramid_config(tmp_path) == config
    assert [p.name for p in tmp_path.iterdir()] == [PYRAMID_CONFIG_NAME]  # no temporary files left


def test_a_folder_without_the_file_is_a_plain_model(tmp_path):
    assert load_pyramid_config(tmp_path) is None
    assert pyramid_config_or_plain(tmp_path) == PLAIN_MODEL_CONFIG
    assert PLAIN_MODEL_CONFIG.default_schedule == "0-0-50" and PLAIN_MODEL_CONFIG.num_stages == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"num_stages": 3, "colour": "red"}', "unknown pyramid config keys"),
        ('{"sampler": "ddim"}', "unknown sampler"),
        ('{"num_stages": 2, "default_schedule": "20-20-10"}', "3 entries"),
        ('{"factors": 7}', "invalid pyramid config"),
        ('{"clean_ends": [0.7, 0.3]}', "strictly increasing"),
    ],
)
def test_broken_files_raise_one_line_checkpoint_errors(tmp_path, text, message):
    (tmp_path / PYRAMID_CONFIG_NAME).write_text(text)
    with pytest.raises(CheckpointError) as err:
        load_pyramid_config(tmp_path)
    assert message in str(err.value) and str(tmp_path) in str(err.value)
    assert "\n" not in str(err.value)
