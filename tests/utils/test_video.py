"""Video files: round trips within stated tolerances, atomic writes, one-line errors, pixel converters."""

import numpy as np
import pytest
import torch

from pyramidal_wan.errors import InputError
from pyramidal_wan.toy.world import seeded_scene
from pyramidal_wan.utils.video import read_video, to_pixel_tensor, to_uint8_frames, write_video


@pytest.fixture(scope="module")
def clip():
    return seeded_scene(0, 1).render()  # (17, 64, 64, 3)


def test_mp4_round_trip_keeps_colours(tmp_path, clip):
    path = write_video(tmp_path / "clip.mp4", clip, fps=8)
    back = read_video(path)
    assert back.shape == clip.shape and back.dtype == np.uint8
    # Lossless H.264 in yuv444p: only the RGB <-> YUV rounding remains.
    assert np.abs(back.astype(int) - clip).max() <= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temporary files left behind


def test_lossy_mp4_stays_close(tmp_path, clip):
    back = read_video(write_video(tmp_path / "clip.mp4", clip, crf=18))
    assert np.abs(back.astype(float) - clip).mean() < 2.0


def test_gif_round_trip_and_odd_size(tmp_path, clip):
    odd = np.ascontiguousarray(clip[:5, 1:34, 2:33])  # (5, 33, 31, 3), every frame different
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "a.gif", odd, fps=4)), odd)
    assert read_video(write_video(tmp_path / "a.mp4", odd)).shape == odd.shape


def test_read_errors_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        read_video(tmp_path / "missing.mp4")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="cannot read video") as err:
        read_video(tmp_path / "junk.mp4")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="unsupported video file type"):
        read_video(tmp_path / "clip.avi")


def test_write_rejects_bad_frames(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match="unsupported"):
        write_video(tmp_path / "a.webm", np.zeros((2, 8, 8, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_pixel_converters_round_trip(clip):
    video = to_pixel_tensor(clip)
    assert video.shape == (3, 17, 64, 64) and video.dtype == torch.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    np.testing.assert_array_equal(to_uint8_frames(video), clip)
    batch = to_pixel_tensor(np.stack([clip, clip]))
    assert batch.shape == (2, 3, 17, 64, 64)
    np.testing.assert_array_equal(to_uint8_frames(batch)[1], clip)
    assert to_uint8_frames(torch.full((3, 1, 2, 2), 5.0)).max() == 255  # out-of-range values are clamped
