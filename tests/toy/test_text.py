"""The toy tokenizer and text encoder, alone and inside diffusers' WanPipeline."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from transformers import AutoTokenizer

from pyramidal_wan.toy.text import MAX_SEQUENCE_LENGTH, TEXT_DIM, build_text_encoder, build_tokenizer
from pyramidal_wan.toy.vae import build_vae
from pyramidal_wan.toy.world import caption_vocabulary, eval_prompts, seeded_scene


def test_tokenizer_ids_padding_and_unknown_words():
    tokenizer = build_tokenizer()
    out = tokenizer(
        ["A red circle moving left on a black background", "a red zebra"],
        padding="max_length",
        max_length=12,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    assert out.input_ids.shape == (2, 12)
    assert out.attention_mask[0].tolist() == [1] * 10 + [0] * 2  # nine words + </s>
    assert (
        out.input_ids[0, 9] == tokenizer.eos_token_id == 1
        and out.input_ids[0, 10] == tokenizer.pad_token_id == 0
    )
    assert out.input_ids[1, 2] == tokenizer.unk_token_id
    assert tokenizer.unk_token_id not in out.input_ids[0].tolist()
    assert len(tokenizer) == 3 + len(caption_vocabulary())


def test_every_caption_fits_and_has_no_unknown_words():
    tokenizer = build_tokenizer()
    scenes = [seeded_scene(0, i) for i in range(200)] + eval_prompts(24, "heldout")
    for scene in scenes:
        ids = tokenizer(scene.caption()).input_ids
        assert len(ids) <= MAX_SEQUENCE_LENGTH and tokenizer.unk_token_id not in ids


def test_tokenizer_save_and_load_round_trip(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    caption = "a green square and a yellow triangle moving up and right on a dark red gradient background"
    assert loaded(caption).input_ids == tokenizer(caption).input_ids
    assert loaded.model_max_length == MAX_SEQUENCE_LENGTH


def test_text_encoder_is_seeded_frozen_and_small():
    a, b, c = build_text_encoder(0), build_text_encoder(0), build_text_encoder(1)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["shared.weight"], state_c["shared.weight"])
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert 15_000 < sum(p.numel() for p in a.parameters()) < 30_000
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    build_text_encoder(5)
    assert torch.equal(torch.rand(1), before)  # building does not disturb the global RNG


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=32,
        num_layers=1,
        rope_max_seq_len=32,
    )
    return WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=build_text_encoder(0),
        vae=build_vae(0).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )


def test_wan_pipeline_encodes_prompts(pipe):
    prompts = [
        "a red circle moving left on a dark blue background",
        "a white square moving up on a black background",
    ]
    embeds, negative = pipe.encode_prompt(
        prompts, negative_prompt="", do_classifier_free_guidance=True, max_sequence_length=MAX_SEQUENCE_LENGTH
    )
    assert embeds.shape == negative.shape == (2, MAX_SEQUENCE_LENGTH, TEXT_DIM)
    # Ten words and </s> carry features; WanPipeline zeroes the padding after them.
    assert torch.all(embeds[0, 11:] == 0) and torch.all(embeds[0, :11].abs().sum(-1) > 0)
    assert torch.all(negative[:, 1:] == 0)  # "" is just </s>
    assert not torch.allclose(embeds[0, :10], embeds[1, :10])


def test_wan_pipeline_runs_and_round_trips(pipe, tmp_path):
    generator = torch.Generator().manual_seed(0)
    kwargs = dict(
        prompt="a red circle moving left on a dark blue background",
        num_frames=5,
        height=32,
        width=32,
        num_inference_steps=2,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        output_type="np",
    )
    video = pipe(**kwargs, generator=generator).frames
    assert video.shape == (1, 5, 32, 32, 3) and np.isfinite(video).all()
    pipe.save_pretrained(tmp_path / "toy-wan")
    loaded = WanPipeline.from_pretrained(tmp_path / "toy-wan")
    again = loaded(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    np.testing.assert_allclose(again, video, atol=1e-5)
