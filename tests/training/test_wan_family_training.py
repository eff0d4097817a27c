"""Training beyond Wan2.1's shape: a Wan2.2-TI2V-5B-shaped model (48-channel latents of a 4x16x16 VAE) is
cached by prepare-data and pyramidized by finetune on tiny random weights; a Wan2.1-I2V-shaped model is
cached with its per-stage first-frame conditions and CLIP tokens and trained on them."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from helpers import TI2V_CHANNELS, build_i2v_components, build_ti2v_components, tiny_train_config
from safetensors.torch import load_file

from pyramidal_wan.cli import main
from pyramidal_wan.data.cache import CachedLatents, CacheSettings, first_frames, fit_video, prepare_data
from pyramidal_wan.data.dataset import read_records
from pyramidal_wan.errors import InputError
from pyramidal_wan.models.loading import load_transformer
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pipelines.planning import plan_sampling
from pyramidal_wan.toy.dataset import make_dataset
from pyramidal_wan.training.config import load_config
from pyramidal_wan.training.methods import build_objective
from pyramidal_wan.training.trainer import sample_batch, train
from pyramidal_wan.utils.video import read_video


def test_a_ti2v_5b_shaped_model_is_cached_and_pyramidized(tmp_path):
    parts = build_ti2v_components()
    make_dataset(tmp_path / "data", n=3, progress=False)
    cache = prepare_data(
        tmp_path / "data",
        tmp_path / "cache",
        parts["vae"],
        parts["tokenizer"],
        parts["text_encoder"],
        CacheSettings(17, 128, 128),
        shard_size=4,
        batch_size=3,
        progress=False,
    )
    parts["transformer"].save_pretrained(tmp_path / "init")
    config = load_config(
        None,
        [
            f"data.cache={tmp_path / 'cache'}",
            f"train.out={tmp_path / 'run'}",
            f"model.init={tmp_path / 'init'}",
            "objective.name=pyramidal",
            "train.batch_size=3",
            "train.steps=2",
            "train.log_every=1",
            "train.checkpoint_every=2",
            "model.pipeline=None",
        ],
    )
    out = train(config, progress=False)
    # The stage latents follow the 4x16x16 VAE: 17x128x128 -> 5x8x8, then halved per stage.
    assert cache["stage_latent_shapes"] == [[48, 5, 8, 8], [48, 3, 4, 4], [48, 2, 2, 2]]
    weights = load_file(out / "checkpoint" / "generator.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    trained = load_transformer(out / "model" / "transformer")
    assert trained.config.in_channels == TI2V_CHANNELS
    before = parts["transformer"].state_dict()
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # two steps moved the weights


@pytest.fixture(scope="module")
def i2v_cache(tmp_path_factory):
    """A Wan2.1-I2V-shaped model (CLIP branch, 36 input channels) and a float32 cache of three toy videos."""
    root = tmp_path_factory.mktemp("i2v-training")
    parts = build_i2v_components()
    make_dataset(root / "data", n=3, progress=False)
    settings = CacheSettings(17, 64, 64, dtype="float32", image_conditioning="clip")
    prepare_data(
        root / "data",
        root / "cache",
        parts["vae"],
        parts["tokenizer"],
        parts["text_encoder"],
        settings,
        batch_size=3,
        progress=False,
        image_encoder=parts["image_encoder"],
        image_processor=parts["image_processor"],
    )
    parts["transformer"].save_pretrained(root / "init")
    return root, parts


def test_the_cached_conditions_are_what_the_pipeline_samples_with(i2v_cache):
    """Per stage, the cache holds the first frame exactly as image-to-video sampling conditions on it."""
    root, parts = i2v_cache
    data = CachedLatents(root / "cache")
    assert data.image_conditioning == "clip" and data.mask_channels == 4
    assert [tuple(c.shape) for c in data.conditions] == [
        (3, 16, 5, 16, 16),
        (3, 16, 3, 8, 8),
        (3, 16, 2, 4, 4),
    ]
    assert data.image_embeds.shape == (3, 17, 32)
    pipe = PyramidalWanPipeline(**parts, default_negative_prompt="")
    first = first_frames(
        fit_video(read_video(root / "data" / read_records(root / "data")[0]["video"]), 17, 64, 64)[None]
    )
    plan = plan_sampling(pipe.pyramid_config, 17, 64, 64, "2-2-2", vae_scale_spatial=4)
    condition = pipe.prepare_image_condition(first[0], plan, 1, torch.device("cpu"))
    for stage, geometry in enumerate(plan.geometry):
        expected = condition.latents[geometry.latent][:, 4:]  # after the mask
        torch.testing.assert_close(data.conditions[stage][:1], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(data.image_embeds[:1], condition.image_embeds, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("objective", ["pyramidal", "multires-fm"])
def test_an_i2v_model_trains_on_its_conditions(i2v_cache, tmp_path, objective):
    root, parts = i2v_cache
    config = load_config(
        None,
        [
            f"data.cache={root / 'cache'}",
            f"train.out={tmp_path / 'run'}",
            f"model.init={root / 'init'}",
            f"objective.name={objective}",
            "train.batch_size=3",
            "train.steps=2",
            "train.log_every=1",
            "train.checkpoint_every=2",
            "model.pipeline=None",
        ],
    )
    objective_ = build_objective(config)
    data = CachedLatents(root / "cache")
    batch = sample_batch(data, 3, 0.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    calls = []
    transformer = objective_.nets["generator"].transformer
    hook = transformer.register_forward_pre_hook(
        lambda m, a, kw: calls.append((kw["hidden_states"], kw["encoder_hidden_states_image"])),
        with_kwargs=True,
    )
    try:
        loss, _ = objective_.generator_loss(batch, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert torch.isfinite(loss) and calls
    for hidden, image_tokens in calls:  # every call: noisy latents, mask, the stage's cached condition
        assert (
            hidden.shape[1] == 36 and (hidden[:, 16:20, 0] == 1).all() and (hidden[:, 16:20, 1:] == 0).all()
        )
        cached = {tuple(c.shape[2:]): c for c in data.conditions}[tuple(hidden.shape[2:])]
        assert any(torch.equal(hidden[:, 20:], cached[rows]) for rows in _row_subsets(3, hidden.shape[0]))
        assert image_tokens.shape == (hidden.shape[0], 17, 32)
    out = train(config, progress=False)
    trained = load_transformer(out / "model" / "transformer")
    before = parts["transformer"].state_dict()
    assert trained.config.in_channels == 36
    assert any(not torch.equal(v, before[k]) for k, v in trained.state_dict().items())


def _row_subsets(batch: int, size: int):
    """The contiguous row slices of `size` out of `batch` (the objectives split a batch into groups)."""
    return [slice(start, start + size) for start in range(batch - size + 1)]


def test_a_cache_without_conditions_is_refused_for_an_i2v_model(i2v_cache, tmp_path):
    root, parts = i2v_cache
    make_dataset(tmp_path / "data", n=1, progress=False)
    prepare_data(
        tmp_path / "data",
        tmp_path / "cache",
        parts["vae"],
        parts["tokenizer"],
        parts["text_encoder"],
        CacheSettings(17, 64, 64),
        progress=False,
    )
    config = load_config(
        None,
        [f"data.cache={tmp_path / 'cache'}", f"train.out={tmp_path / 'run'}", f"model.init={root / 'init'}"]
        + ["objective.name=pyramidal", "train.steps=1", "model.pipeline=None"],
    )
    with pytest.raises(InputError, match="image conditioning is clip but the cache .* holds none"):
        train(config, progress=False)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_prepare_data_caches_the_conditions_of_an_i2v_folder(i2v_cache, tmp_path, capsys):
    root, parts = i2v_cache
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    WanImageToVideoPipeline(**parts, scheduler=scheduler).save_pretrained(tmp_path / "model")
    args = ["prepare-data", "--data", str(root / "data"), "--model", str(tmp_path / "model")]
    size = ["--num-frames", "17", "--height", "64", "--width", "64"]
    assert main([*args, "--out", str(tmp_path / "cache"), *size]) == 0
    assert "first frame as image conditioning per stage ('clip')" in capsys.readouterr().out
    cached, reference = CachedLatents(tmp_path / "cache"), CachedLatents(root / "cache")
    for ours, theirs in zip(cached.conditions, reference.conditions):
        torch.testing.assert_close(ours.float(), theirs, atol=1e-2, rtol=1e-2)  # float16 storage


def _transformers(objective) -> list:
    """Every transformer an objective runs: the student, teacher, fake score, backbone."""
    nets = [
        *objective.nets.values(),
        *(getattr(objective, n, None) for n in ("teacher", "rec_teacher", "backbone")),
    ]
    found = {
        id(m): m
        for net in nets
        if net is not None
        for m in net.modules()
        if isinstance(m, WanTransformer3DModel)
    }
    return list(found.values())


@pytest.mark.parametrize(
    "method, overrides",
    [
        (
            "dmd-ot",
            ["objective.schedule=2-2-1", "objective.student_input=backward", "objective.teach_weight=0"],
        ),
        ("dmd", ["objective.schedule=0-0-2"]),
        ("adv-p", ["objective.schedule=2-2-1", "objective.rec_steps=2"]),
    ],
)
def test_an_i2v_model_is_distilled_on_its_conditions(i2v_cache, tmp_path, method, overrides):
    """Student, teacher and critic calls all get the mask and the cached condition of the stage they run at
    (CFG's doubled batch too), and a few steps train."""
    root, _ = i2v_cache
    init = root / "init"
    config = tiny_train_config(
        root / "cache",
        tmp_path / "run",
        f"model.init={init}",
        f"objective.name={method}",
        f"objective.teacher={init}",
        "objective.teacher_uncond=empty",
        "objective.critic_ratio=1",
        *overrides,
    )
    objective = build_objective(config)
    data = CachedLatents(root / "cache")
    batch = sample_batch(data, 3, 0.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    calls = {}
    hooks = [
        t.register_forward_pre_hook(lambda m, a, kw: calls.setdefault(id(m), []).append(kw), with_kwargs=True)
        for t in _transformers(objective)
    ]
    try:
        for loss_fn in (objective.generator_loss, objective.critic_loss):
            loss, _ = loss_fn(batch, torch.Generator().manual_seed(0))
            assert torch.isfinite(loss)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) == len(_transformers(objective))  # every network ran
    by_size = {tuple(c.shape[2:]): c for c in batch["image_conditions"]}  # the sampled rows' cached ones
    for kwargs in (kw for per_model in calls.values() for kw in per_model):
        hidden = kwargs["hidden_states"]
        repeats = hidden.shape[0] // 3  # CFG runs [uncond; cond] as one call
        assert (hidden[:, 16:20, 0] == 1).all() and (hidden[:, 16:20, 1:] == 0).all()
        assert torch.equal(hidden[:, 20:], by_size[tuple(hidden.shape[2:])].repeat(repeats, 1, 1, 1, 1))
        assert torch.equal(kwargs["encoder_hidden_states_image"], batch["image_embeds"].repeat(repeats, 1, 1))
    if method == "dmd-ot":  # end to end: the run trains and exports the I2V student
        out = train(config, progress=False)
        trained = load_transformer(out / "model" / "transformer")
        before = load_transformer(init).state_dict()
        assert any(not torch.equal(v, before[k]) for k, v in trained.state_dict().items())


def test_distilling_an_i2v_model_from_a_text_to_video_teacher_is_refused(i2v_cache, tmp_path):
    root, _ = i2v_cache
    config = tiny_train_config(
        root / "cache",
        tmp_path / "run",
        f"model.init={root / 'init'}",
        "objective.name=dmd-ot",
        "objective.teacher=toy-wan",
    )
    with pytest.raises(InputError, match="image conditioning differs .*objective.teacher text-to-video"):
        build_objective(config)
