"""Loading tiny random checkpoints in every supported layout, LoRA adapters, and one-line errors."""

import json

import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from helpers import to_original_names
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from pyramidal_wan.errors import CheckpointError
from pyramidal_wan.models.loading import (
    apply_lora,
    check_safetensors,
    detect_layout,
    load_original_transformer,
    load_pipeline_components,
    load_transformer,
    load_wan_pipeline,
)
from pyramidal_wan.models.presets import get_transformer_config

# toy-wan with 2 layers: width 128 (4 heads x 32), text width 32.
TINY = {**get_transformer_config("toy-wan"), "num_layers": 2}
# The same model as the original Wan2.1 release would describe it (its config.json keys).
TINY_ORIGINAL_CONFIG = {
    "_class_name": "WanModel",
    "model_type": "t2v",
    "dim": 128,
    "ffn_dim": 256,
    "freq_dim": 256,
    "in_dim": 16,
    "out_dim": 16,
    "num_heads": 4,
    "num_layers": 2,
    "text_dim": 32,
    "eps": 1e-6,
    "text_len": 512,
}


def forward(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 8, 8, generator=generator)  # (B, C, T, H, W)
    text = torch.randn(1, 6, 32, generator=generator)  # (B, N_txt, text_dim)
    with torch.no_grad():
        return model(x, torch.tensor([700.0]), text, return_dict=False)[0]


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return WanTransformer3DModel.from_config(TINY).eval()


@pytest.fixture(scope="module")
def transformer_dir(tmp_path_factory, reference):
    path = tmp_path_factory.mktemp("ckpt") / "transformer"
    reference.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, reference):
    words = ["<pad>", "</s>", "<unk>", "a", "red", "circle", "moves", "left"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    )
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False], attn_scales=[]
    )
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=reference,
    )
    path = tmp_path_factory.mktemp("pipe") / "wan"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory, reference):
    path = tmp_path_factory.mktemp("original")
    save_file(to_original_names(reference.state_dict()), path / "diffusion_pytorch_model.safetensors")
    (path / "config.json").write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    return path


# ---- layouts ------------------------------------------------------------------------------------------


def test_detect_layouts(transformer_dir, pipeline_dir, original_dir):
    assert detect_layout(pipeline_dir) == "pipeline"
    assert detect_layout(transformer_dir) == "transformer"
    assert detect_layout(original_dir) == "original"
    assert detect_layout(original_dir / "diffusion_pytorch_model.safetensors") == "original"


def test_transformer_folder_roundtrip(transformer_dir, reference):
    loaded = load_transformer(transformer_dir)
    assert_same_weights(loaded, reference)
    torch.testing.assert_close(forward(loaded), forward(reference))  # float32 defaults: atol 1e-5


def test_pipeline_folder_component_by_component(pipeline_dir, reference):
    components = load_pipeline_components(pipeline_dir)
    assert set(components) == {"tokenizer", "text_encoder", "vae", "transformer", "scheduler"}
    assert_same_weights(components["transformer"], reference)
    assert isinstance(components["vae"], AutoencoderKLWan)
    assert isinstance(components["scheduler"], FlowMatchEulerDiscreteScheduler)
    assert components["scheduler"].config.shift == 3.0
    assert components["tokenizer"]("a red circle").input_ids == [3, 4, 5]
    assert_same_weights(load_transformer(pipeline_dir), reference)
    pipe = load_wan_pipeline(pipeline_dir, torch_dtype={"transformer": torch.bfloat16})
    assert isinstance(pipe, WanPipeline)
    assert pipe.transformer.proj_out.weight.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32


def test_original_layout_through_diffusers_conversion(original_dir, reference):
    loaded = load_transformer(original_dir)
    assert_same_weights(loaded, reference)
    torch.testing.assert_close(forward(loaded), forward(reference))  # float32 defaults: atol 1e-5


def test_original_sharded_with_index(tmp_path, reference):
    state = to_original_names(reference.state_dict())
    names = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[::2]}
    shards["diffusion_pytorch_model-00002-of-00002.safetensors"] = names[1::2]
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / file)
        weight_map.update(dict.fromkeys(keys, file))
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    (tmp_path / "config.json").write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    assert_same_weights(load_original_transformer(tmp_path), reference)


def test_original_single_file_with_prefix_and_explicit_config(tmp_path, reference):
    # Repackaged single files (e.g. ComfyUI) prefix every key with model.diffusion_model.
    state = {f"model.diffusion_model.{k}": v for k, v in to_original_names(reference.state_dict()).items()}
    save_file(state, tmp_path / "wan_tiny.safetensors")
    loaded = load_transformer(tmp_path / "wan_tiny.safetensors", config=TINY, torch_dtype=torch.bfloat16)
    assert loaded.proj_out.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.proj_out.weight, reference.proj_out.weight.to(torch.bfloat16))


def test_single_file_already_in_diffusers_names(tmp_path, reference):
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "wan.safetensors")
    assert_same_weights(load_transformer(tmp_path / "wan.safetensors", config=TINY), reference)


# ---- LoRA ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory, transformer_dir):
    torch.manual_seed(0)
    base = load_transformer(transformer_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["to_q", "to_v", "to_out.0", "ffn.net.0.proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(base, config)  # random A and B, so the adapter changes the output
    path = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(path)
    return path, forward(peft_model)


def test_lora_from_peft_folder_matches_peft(peft_adapter, transformer_dir, reference):
    path, expected = peft_adapter
    model = apply_lora(load_transformer(transformer_dir), path, adapter_name="pyramidal")
    out = forward(model)
    assert not torch.allclose(out, forward(reference))  # the adapter does something
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    model.fuse_lora()
    torch.testing.assert_close(forward(model), expected, rtol=1e-5, atol=1e-5)


def test_lora_diffusers_format_roundtrip(peft_adapter, transformer_dir, tmp_path):
    path, expected = peft_adapter
    model = apply_lora(load_transformer(transformer_dir), path, adapter_name="a")
    model.save_lora_adapter(tmp_path / "diffusers_lora", adapter_name="a")
    again = apply_lora(load_transformer(transformer_dir), tmp_path / "diffusers_lora")
    torch.testing.assert_close(forward(again), expected, rtol=0, atol=1e-6)


def test_lora_for_another_model_is_rejected(peft_adapter, tmp_path):
    path, _ = peft_adapter
    torch.manual_seed(0)
    wider = WanTransformer3DModel.from_config({**TINY, "attention_head_dim": 16})
    with pytest.raises(CheckpointError, match="features") as err:
        apply_lora(wider, path)
    assert "\n" not in str(err.value)


# ---- errors -------------------------------------------------------------------------------------------


def one_line_error(fn, *args, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_path(tmp_path):
    message = one_line_error(load_transformer, tmp_path / "nope", match="not found")
    assert str(tmp_path / "nope") in message


def test_wrong_layout_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    one_line_error(load_transformer, tmp_path, match="model_index.json")
    one_line_error(load_pipeline_components, tmp_path, match="model_index.json")


def test_pipeline_without_transformer_folder(tmp_path, pipeline_dir):
    (tmp_path / "model_index.json").write_text((pipeline_dir / "model_index.json").read_text())
    one_line_error(load_transformer, tmp_path, match="transformer/config.json")
    one_line_error(load_pipeline_components, tmp_path, match="component folder missing")


def test_truncated_safetensors(tmp_path, reference):
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, file)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 1000])
    message = one_line_error(check_safetensors, file, match="truncated or corrupt")
    assert str(file) in message
    reference.save_config(tmp_path)
    one_line_error(load_transformer, tmp_path, match="truncated or corrupt")


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", b"\xff" * 64])
def test_garbage_safetensors(tmp_path, content):
    (tmp_path / "x.safetensors").write_bytes(content)
    one_line_error(check_safetensors, tmp_path / "x.safetensors", match="truncated or corrupt")


def test_missing_shard(tmp_path):
    index = {"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    one_line_error(load_transformer, tmp_path, match="missing")


def test_pickle_weights_are_refused(tmp_path, reference):
    reference.save_config(tmp_path)
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    one_line_error(load_transformer, tmp_path, match="pickle")


def test_weights_for_another_config(tmp_path, reference):
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    one_line_error(load_transformer, tmp_path, match="missing")
    (tmp_path / "config.json").write_text(json.dumps({**config, "ffn_dim": 128}))
    one_line_error(load_transformer, tmp_path, match="wrong shape")


def test_original_file_without_config(tmp_path, reference):
    save_file(to_original_names(reference.state_dict()), tmp_path / "wan.safetensors")
    one_line_error(load_transformer, tmp_path / "wan.safetensors", match="no config.json")
