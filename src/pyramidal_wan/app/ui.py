"""The Gradio page of `pyramidal-wan serve`: one video with live per-stage previews, and a side-by-side of
two schedules. All the work is `app.studio.Studio`'s; this module only lays out the page and formats.

Requests queue (one generation at a time: `default_concurrency_limit=1`); a bad input is shown in the page
(#error) and an unexpected failure too, so no request stops the server.
"""

from __future__ import annotations

import queue
import sys
import threading
import traceback

from pyramidal_wan.app.studio import PREVIEW, Generation, StagePreview, Studio, stage_rows
from pyramidal_wan.errors import InputError

TITLE = "PyramidalWan"
INTRO = (
    "Text to video through a resolution pyramid: the low stages sample a small latent, so each stage's "
    "clean estimate is a whole (blurry) video long before the full-resolution stage ends. Schedules list "
    "steps per stage from the lowest resolution: 2-2-1 (few-step), 20-20-10 (multi-step), 0-0-50 (plain Wan)."
)


def _error(err: BaseException) -> str:
    if isinstance(err, InputError):
        return f"**Error:** {err}"
    traceback.print_exception(err, file=sys.stderr)
    return f"**Internal error** ({type(err).__name__}: {err}); the server keeps running."


def _preview_caption(preview: StagePreview) -> str:
    size = "x".join(map(str, preview.latent_size))
    return f"stage {preview.stage} (latent {size}) at {preview.seconds_in:.2f} s"


def stats_markdown(generation: Generation, previews: bool) -> str:
    """TFLOPs, seconds per part, and what the previews cost."""
    frames, height, width = generation.size
    lines = [
        f"**{generation.model}**, schedule **{generation.schedule}** ({generation.sampler}), seed "
        f"{generation.seed}, {frames} frames of {height}x{width}: **{generation.tflops:.4g} TFLOPs**, "
        f"**{generation.total_seconds:.2f} s**",
        "",
        "| part | seconds |",
        "|---|---:|",
        *(f"| {part} | {seconds} |" for part, seconds in stage_rows(generation)),
        "",
    ]
    if previews:
        share = 100 * generation.preview_seconds / max(generation.total_seconds, 1e-9)
        lines.append(
            f"Stage previews cost {generation.preview_seconds:.3f} s ({share:.0f}% of this call; the "
            f"'{PREVIEW}' row); switch them off for the pure sampling time."
        )
    else:
        lines.append("Stage previews off.")
    return "\n".join(lines)


def baseline_schedule(studio: Studio, name: str) -> str:
    """Plain Wan sampling (0-...-0-50) at the model's stage count: the side-by-side's default partner."""
    stages = len(studio.default_schedule(name).split("-"))
    return "-".join(["0"] * (stages - 1) + ["50"])


def build_app(studio: Studio):
    """The gr.Blocks page over `studio`."""
    import gradio as gr

    default = studio.names[0]

    def generate(model, prompt, schedule, seed, size, previews):
        try:
            studio.plan(model, prompt, schedule, size)  # bad input: a message, before any model work
        except Exception as err:  # every failure is shown in the page
            yield _error(err), None, [], ""
            return
        shown: queue.Queue = queue.Queue()
        outcome: dict = {}

        def work():
            try:
                outcome["generation"] = studio.generate(
                    model, prompt, schedule, seed or 0, size, previews, on_preview=shown.put
                )
            except Exception as err:
                outcome["error"] = err
            finally:
                shown.put(None)

        threading.Thread(target=work, daemon=True).start()
        gallery = []
        while (preview := shown.get()) is not None:
            gallery.append((str(studio.write_preview(preview, "preview")), _preview_caption(preview)))
            yield "", None, list(gallery), f"stage {preview.stage} done; sampling the next stage ..."
        if "error" in outcome:
            yield _error(outcome["error"]), None, gallery, ""
            return
        generation = outcome["generation"]
        video = str(studio.write_video(generation, "video"))
        yield "", video, gallery, stats_markdown(generation, previews)

    def compare(model, prompt, schedule_a, schedule_b, seed, size):
        try:
            for schedule in (schedule_a, schedule_b):
                studio.plan(model, prompt, schedule, size)
            results = [
                studio.generate(model, prompt, s, seed or 0, size, previews=False)
                for s in (schedule_a, schedule_b)
            ]
        except Exception as err:
            return _error(err), None, None, ""
        rows = [f"| {g.schedule} | {g.sampler} | {g.tflops:.4g} | {g.total_seconds:.2f} |" for g in results]
        a, b = results
        table = "\n".join(
            [
                "| schedule | sampler | TFLOPs | seconds |",
                "|---|---|---:|---:|",
                *rows,
                "",
                f"{b.schedule} takes {b.tflops / max(a.tflops, 1e-12):.2f}x the FLOPs and "
                f"{b.total_seconds / max(a.total_seconds, 1e-9):.2f}x the time of {a.schedule}.",
            ]
        )
        return "", str(studio.write_video(a, "a")), str(studio.write_video(b, "b")), table

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", elem_id="prompt", lines=2)
                    model = gr.Dropdown(studio.names, value=default, label="Model", elem_id="model")
                    schedule = gr.Textbox(
                        label="Schedule (empty: the model's default)",
                        placeholder=studio.default_schedule(default),
                        elem_id="schedule",
                    )
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                        size = gr.Textbox(
                            label="Size FRAMESxHEIGHTxWIDTH (empty: the model's)", elem_id="size"
                        )
                    previews = gr.Checkbox(value=True, label="Stage previews", elem_id="previews-on")
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column():
                    error = gr.Markdown(elem_id="error")
                    video = gr.Video(label="Video", elem_id="video", autoplay=True, loop=True)
                    stats = gr.Markdown(elem_id="stats")
            gallery = gr.Gallery(
                label="Each stage's clean estimate, decoded as it ends", elem_id="stage-previews", columns=4
            )
            run.click(
                generate, [model, prompt, schedule, seed, size, previews], [error, video, gallery, stats]
            )
        with gr.Tab("Side by side"):
            with gr.Row():
                with gr.Column():
                    prompt_2 = gr.Textbox(label="Prompt", elem_id="prompt-2", lines=2)
                    model_2 = gr.Dropdown(studio.names, value=default, label="Model", elem_id="model-2")
                    with gr.Row():
                        schedule_a = gr.Textbox(
                            value=studio.default_schedule(default), label="Schedule A", elem_id="schedule-a"
                        )
                        schedule_b = gr.Textbox(
                            value=baseline_schedule(studio, default), label="Schedule B", elem_id="schedule-b"
                        )
                    with gr.Row():
                        seed_2 = gr.Number(value=0, precision=0, label="Seed", elem_id="seed-2")
                        size_2 = gr.Textbox(label="Size (empty: the model's)", elem_id="size-2")
                    run_2 = gr.Button("Compare", variant="primary", elem_id="compare")
                with gr.Column():
                    error_2 = gr.Markdown(elem_id="error-2")
                    with gr.Row():
                        video_a = gr.Video(label="Schedule A", elem_id="video-a", autoplay=True, loop=True)
                        video_b = gr.Video(label="Schedule B", elem_id="video-b", autoplay=True, loop=True)
                    table = gr.Markdown(elem_id="compare-stats")
            run_2.click(
                compare,
                [model_2, prompt_2, schedule_a, schedule_b, seed_2, size_2],
                [error_2, video_a, video_b, table],
            )
    app.queue(default_concurrency_limit=1)
    return app
