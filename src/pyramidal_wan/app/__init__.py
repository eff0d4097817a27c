"""The browser app of `pyramidal-wan serve`: `studio` runs the generations (no UI code), `ui` is the
Gradio page."""
