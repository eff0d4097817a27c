"""`pyramidal-wan serve` in a real browser: Playwright on the system Chromium drives the Gradio app.

The server runs as its own process on a free 127.0.0.1 port with the bundled default model (a random toy
few-step model where none is bundled). The test enters a prompt, waits for the video, checks that every
stage's preview appeared and the costs are shown, sends two requests at once (they queue), checks the
messages of bad input, runs the side-by-side tab, and saves screenshots of both pages: into a temporary
folder, or as docs/app.png and docs/app-side-by-side.png with APP_SCREENSHOTS=docs (`make app-screenshot`),
so that `make test` leaves the checkout unchanged.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pyramidal_wan.app.studio import PREVIEW, Studio, parse_size
from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.eval.page_check import find_chromium, launch_chromium, record_errors
from pyramidal_wan.models.bundled import REPO_ROOT, bundled_model_path
from pyramidal_wan.models.checkpoint import pyramid_config_or_plain
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.family import assemble_toy_pipeline

PROMPT = "a red circle moving left on a dark blue background"
SCREENSHOT_DIR = os.environ.get("APP_SCREENSHOTS")  # a folder in the repository; unset: a temporary one
needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="Chromium not installed (apt-get install -y chromium); app test skipped"
)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    try:
        return bundled_model_path()
    except CheckpointError:
        config = PyramidConfig(sampler="fewstep", default_schedule="2-2-1", guidance_scale=1.0)
        return assemble_toy_pipeline(tmp_path_factory.mktemp("app") / "few-step", pyramid_config=config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    command = [sys.executable, "-m", "pyramidal_wan.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--model", str(model), "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield process, url
    process.terminate()
    process.wait(timeout=30)


def generate(page, prompt: str, schedule: str = "", size: str = "", seed: int = 0) -> None:
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#seed input").fill(str(seed))
    page.locator("#schedule textarea, #schedule input").first.fill(schedule)
    page.locator("#size textarea, #size input").first.fill(size)
    page.locator("#generate").click()


@needs_chromium
def test_app_generates_with_stage_previews_and_shows_bad_input(server, model, tmp_path_factory):
    process, url = server
    stages = pyramid_config_or_plain(model).num_stages
    with launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors, _ = record_errors(page)
        page.goto(url, wait_until="networkidle")
        generate(page, PROMPT)
        page.wait_for_selector("#video video", timeout=120_000)
        # Every stage's decoded clean estimate, lowest resolution first, each an image the browser decoded.
        previews = page.locator("#stage-previews img")
        assert previews.count() == stages
        assert page.evaluate(
            "() => [...document.querySelectorAll('#stage-previews img')].every(i => i.naturalWidth > 0)"
        )
        captions = page.locator("#stage-previews").inner_text()
        assert [f"stage {s} (latent" in captions for s in range(stages)] == [True] * stages
        assert captions.index(f"stage {stages - 1}") < captions.index("stage 0")
        stats = page.locator("#stats").inner_text()
        assert "TFLOPs" in stats and "preview decode" in stats and "Stage previews cost" in stats
        ready = "() => { const v = document.querySelector('#video video'); return !v.error && v.readyState }"
        page.wait_for_function(f"({ready})() >= 1", timeout=30_000)  # the MP4 plays in Chromium
        shots = REPO_ROOT / SCREENSHOT_DIR if SCREENSHOT_DIR else tmp_path_factory.mktemp("screenshots")
        shots.mkdir(exist_ok=True)
        page.screenshot(path=str(shots / "app.png"), full_page=True)

        # Two requests at once queue and both finish (a second browser tab, previews off there).
        other = browser.new_page()
        other.goto(url, wait_until="networkidle")
        for tab in (other, page):
            tab.locator("#previews-on input").uncheck()
        generate(other, PROMPT)
        generate(page, "a blue square moving up on a dark green background", seed=1)
        other.wait_for_selector("#stats :text('TFLOPs')", timeout=120_000)
        page.wait_for_selector("#stats :text('seed 1')", timeout=120_000)
        assert "Stage previews off" in other.locator("#stats").inner_text()

        # Bad input: a message in the page, and the server keeps running.
        for prompt, schedule, size, message in (
            ("", "", "", "the prompt is empty"),
            (PROMPT, "2-2", "", "has 2 entries but the model has"),
            (PROMPT, "", "17x60x64", "height 60 must be divisible"),
            (PROMPT, "", "big", "must be FRAMESxHEIGHTxWIDTH"),
        ):
            generate(page, prompt, schedule, size)
            page.wait_for_selector(f"#error :text('{message}')", timeout=30_000)

        # Side by side: the same prompt and seed at two schedules, with their costs.
        page.get_by_role("tab", name="Side by side").click()
        page.locator("#prompt-2 textarea").fill(PROMPT)
        plain = "-".join(["0"] * (stages - 1) + ["2"])
        page.locator("#schedule-b textarea, #schedule-b input").first.fill(plain)
        page.locator("#compare").click()
        page.wait_for_selector("#compare-stats :text('x the FLOPs')", timeout=120_000)
        assert page.locator("#video-a video").count() == 1 and page.locator("#video-b video").count() == 1
        assert plain in page.locator("#compare-stats").inner_text()
        page.screenshot(path=str(shots / "app-side-by-side.png"), full_page=True)
        assert errors == []
    assert process.poll() is None


def test_studio_checks_input_before_any_model_work(model):
    studio = Studio([model])
    name = studio.names[0]
    with pytest.raises(InputError, match="prompt is empty"):
        studio.plan(name, "  ", None, None)
    with pytest.raises(InputError, match="unknown model"):
        studio.plan("other", PROMPT, None, None)
    with pytest.raises(InputError, match="FRAMESxHEIGHTxWIDTH"):
        parse_size("17x64")
    assert parse_size(" 17x64x64 ") == (17, 64, 64) and parse_size("") == (None, None, None)
    assert studio._pipes == {}  # nothing was loaded
    with pytest.raises(InputError, match="not a diffusers model folder"):
        Studio([model.parent])


def test_previews_show_each_stage_in_order_and_leave_the_video_unchanged(model):
    """A preview is a decode of the sampler's clean estimate: it must not change what is sampled."""
    studio = Studio([model])
    name = studio.names[0]
    stages = pyramid_config_or_plain(model).num_stages
    shown = []
    with_previews = studio.generate(name, PROMPT, seed=3, on_preview=shown.append)
    without = studio.generate(name, PROMPT, seed=3, previews=False)
    assert [p.stage for p in shown] == list(range(stages - 1, -1, -1))  # lowest resolution first
    assert [p.stage for p in with_previews.previews] == [p.stage for p in shown]
    assert all(p.frames.shape == (*with_previews.size, 3) for p in shown)  # carried to full resolution
    assert shown[0].latent_size < shown[-1].latent_size
    assert (with_previews.frames == without.frames).all()
    assert PREVIEW in with_previews.seconds and PREVIEW not in without.seconds
    assert {f"stage {s}" for s in range(stages)} <= set(without.seconds)
    assert without.tflops == with_previews.tflops > 0
