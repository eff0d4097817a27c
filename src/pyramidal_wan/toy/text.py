"""The toy text stack: a word-level tokenizer over the caption vocabulary and a tiny frozen UMT5 encoder.

Both plug into `diffusers.WanPipeline` where Wan2.1 has its T5 tokenizer and UMT5-XXL encoder:
`build_tokenizer()` returns a `transformers.PreTrainedTokenizerFast` (it saves and loads like Wan's
`tokenizer/` folder and answers the pipeline's `padding="max_length"` call), and `build_text_encoder()` a
`transformers.UMT5EncoderModel` with random weights drawn from a seed and then frozen. The encoder is never
trained: the transformer learns to read its fixed random features (calibration: colours are separable).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from pyramidal_wan.toy.world import caption_vocabulary

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
# T5's layout: pad 0, eos 1, unk 2, then the words.
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)

# The longest caption has 21 words plus the end token; 32 leaves room and keeps the text sequence short.
MAX_SEQUENCE_LENGTH = 32
TEXT_DIM = 32  # d_model of the toy encoder = the toy transformer's text_dim


def build_tokenizer(max_length: int = MAX_SEQUENCE_LENGTH) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `caption_vocabulary()`: lower-cases, splits on whitespace, appends `</s>`.

    Unknown words map to `<unk>`; padding is `<pad>` (id 0) on the right, as in T5.
    """
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *caption_vocabulary()])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # add_special_tokens=True (what WanPipeline passes) appends the end token, like T5's tokenizer.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, vocab[EOS_TOKEN])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        padding_side="right",
    )


def text_encoder_config(vocab_size: int) -> UMT5Config:
    """The calibrated toy UMT5 encoder config: d_model 32, 2 layers, 4 heads, gated-GELU FFN of 64."""
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=MAX_SEQUENCE_LENGTH,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def build_text_encoder(seed: int = 0, vocab_size: int | None = None) -> UMT5EncoderModel:
    """A frozen (eval mode, no gradients) UMT5 encoder with weights drawn from `seed`, about 21 k parameters.

    `vocab_size` defaults to the toy tokenizer's. The global torch RNG is left as it was.
    """
    vocab_size = vocab_size or len(SPECIAL_TOKENS) + len(caption_vocabulary())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = UMT5EncoderModel(text_encoder_config(vocab_size))
    return encoder.eval().requires_grad_(False)
