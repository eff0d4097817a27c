"""The toy dataset writer: on-disk format, resumability, and guards against mixing datasets."""

import json

import numpy as np
import pytest

from pyramidal_wan.data.dataset import CAPTIONS_FILE, read_records
from pyramidal_wan.errors import InputError
from pyramidal_wan.toy.dataset import make_dataset
from pyramidal_wan.toy.world import Scene, parse_caption, seeded_scene
from pyramidal_wan.utils.video import read_video


def test_dataset_format_matches_the_scenes(tmp_path):
    captions = make_dataset(tmp_path, 3, seed=4, split="heldout", progress=False)
    assert captions == tmp_path / CAPTIONS_FILE
    records = read_records(tmp_path)
    assert [r["video"] for r in records] == ["000000.mp4", "000001.mp4", "000002.mp4"]
    for index, record in enumerate(records):
        scene = seeded_scene(4, index, "heldout")
        assert record["caption"] == scene.caption() and record["split"] == "heldout"
        assert record["seed"] == 4 and record["index"] == index
        assert Scene.from_dict(record["scene"]) == scene
        assert parse_caption(record["caption"]) == scene.prompt()
        video = read_video(tmp_path / record["video"])
        assert np.abs(video.astype(int) - scene.render()).max() <= 3  # lossless H.264 up to YUV rounding
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["000000.mp4", "000001.mp4", "000002.mp4", CAPTIONS_FILE, "dataset.json"]
    )


def test_rerun_skips_existing_clips_and_extends(tmp_path):
    make_dataset(tmp_path, 2, progress=False)
    first = tmp_path / "000000.mp4"
    first.write_bytes(b"marker: an existing file is kept as it is")
    (tmp_path / "000001.mp4").unlink()  # as if interrupted before this clip
    make_dataset(tmp_path, 3, progress=False)
    assert first.read_bytes().startswith(b"marker")
    assert read_video(tmp_path / "000001.mp4").shape == (17, 64, 64, 3)
    assert len(read_records(tmp_path)) == 3


def test_mismatched_settings_and_bad_arguments_are_refused(tmp_path):
    make_dataset(tmp_path, 1, seed=0, progress=False)
    with pytest.raises(InputError, match="same settings"):
        make_dataset(tmp_path, 1, seed=1, progress=False)
    with pytest.raises(InputError, match="--n"):
        make_dataset(tmp_path / "x", 0, progress=False)
    with pytest.raises(InputError, match="--split"):
        make_dataset(tmp_path / "x", 1, split="test", progress=False)


def test_read_records_validates_lines(tmp_path):
    with pytest.raises(InputError, match="no captions.jsonl"):
        read_records(tmp_path)
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / CAPTIONS_FILE).write_text(json.dumps({"video": "a.mp4"}) + "\n")
    with pytest.raises(InputError, match="line 1 needs the keys 'video' and 'caption'"):
        read_records(tmp_path)
    (tmp_path / CAPTIONS_FILE).write_text('{"video": "a.mp4", "caption": "x"}\n\nnot json\n')
    with pytest.raises(InputError, match="line 3 is not JSON"):
        read_records(tmp_path)


def test_the_whole_listing_is_checked_and_every_bad_line_reported(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    lines = [
        {"video": "a.mp4", "caption": "a red circle"},
        {"video": None, "caption": "x"},
        {"video": "a.mp4", "caption": 7},
        ["a.mp4", "x"],
        {"video": "gone.mp4", "caption": "x"},
        {"video": "a.mp4", "caption": "a red circle"},
    ]
    (tmp_path / CAPTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(InputError) as err:
        read_records(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "has 5 bad line(s)" in message
    for expected in (
        "line 2 has 'video': null",
        "line 3 has 'caption': 7; it must be a string",
        "line 4 is a JSON list",
        "line 5 names gone.mp4, which is not a file",
        "line 6 repeats line 1",
    ):
        assert expected in message
    (tmp_path / CAPTIONS_FILE).write_text("\n")
    with pytest.raises(InputError, match="lists no videos"):
        read_records(tmp_path)
