"""The procedural toy video world and the recipes of the bundled toy model family.

- `world`: scenes, captions, rendering, ground truth, the held-out split and the evaluation prompt set.
- `dataset`: writes a folder of MP4 clips plus `captions.jsonl` (the training data format).
- `text`: the caption-vocabulary tokenizer and the tiny frozen UMT5 text encoder.
- `vae`: the tiny `AutoencoderKLWan` and its training recipe.
"""
