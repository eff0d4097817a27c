"""Training a clean-first-frame model (Wan2.2-TI2V-5B shape, tiny random weights) image-to-video:
`data.image_to_video` rows get their stage latent's first frame, clean and at timestep 0, and no loss on it,
in `pyramidal`, `multires-fm` and `dmd-ot` (every network call); the cache needs nothing extra, because the
pixel-space stage latents begin with the image latents the pipeline conditions each stage on; the exported
folders sample image-to-video; bad combinations are one-line errors before any weights load."""

import contextlib
import io

import pytest
import torch
from diffusers import WanTransformer3DModel
from helpers import TI2V_CHANNELS, TINY_I2V_TRANSFORMER, build_ti2v_components, conditioning_image
from helpers import tiny_train_config as train_config

from pyramidal_wan.cli import main
from pyramidal_wan.data.cache import CachedLatents, derive_latent_cache, first_frames, fit_video
from pyramidal_wan.data.dataset import read_records
from pyramidal_wan.models.conditioning import LatentEncoder
from pyramidal_wan.models.loading import load_transformer
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pipelines.planning import plan_sampling
from pyramidal_wan.toy.dataset import make_dataset
from pyramidal_wan.toy.world import WorldConfig
from pyramidal_wan.training.methods import build_objective
from pyramidal_wan.training.objectives import generated_frames
from pyramidal_wan.training.trainer import sample_batch, train
from pyramidal_wan.utils.video import read_video

PROMPT = "a red circle moving left on a dark blue background"
SIZE = ["--num-frames", "17", "--height", "128", "--width", "128"]  # stages 5x8x8, 3x4x4, 2x2x2 latents


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    """A TI2V-5B-shaped diffusers folder (expand_timesteps) whose defaults are 17x128x128, its bare
    transformer folder, and a float32 pixel cache of three toy videos made by `prepare-data` from it."""
    root = tmp_path_factory.mktemp("ti2v-training")
    parts = build_ti2v_components()
    PyramidalWanPipeline(
        **parts,
        expand_timesteps=True,
        default_num_frames=17,
        default_height=128,
        default_width=128,
        default_negative_prompt="",
    ).save_pretrained(root / "model")
    parts["transformer"].save_pretrained(root / "init")
    # Clips at the cache size: the first frame the pipeline gets as an image is then the cached frame itself
    make_dataset(root / "data", n=3, config=WorldConfig(height=128, width=128), progress=False)
    args = ["prepare-data", "--data", str(root / "data"), "--model", str(root / "model"), *SIZE]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--out", str(root / "cache"), "--dtype", "float32", "--batch-size", "3"]) == 0
    return root, parts, printed.getvalue()


def test_the_stage_latents_begin_with_the_image_latents_the_pipeline_conditions_on(ti2v):
    """Per stage, latent frame 0 of the cached (pixel-construction) stage latent is what image-to-video
    sampling puts on frame 0 for that video's first frame: nothing extra needs caching."""
    root, parts, printed = ti2v
    assert "each stage latent's first frame is the clean image latent of image-to-video training" in printed
    data = CachedLatents(root / "cache")
    assert data.image_conditioning is None  # no separate conditions
    pipe = PyramidalWanPipeline(**parts, expand_timesteps=True, default_negative_prompt="")
    video = read_video(root / "data" / read_records(root / "data")[0]["video"])
    first = first_frames(fit_video(video, 17, 128, 128)[None])[0]
    plan = plan_sampling(pipe.pyramid_config, 17, 128, 128, "2-2-2", vae_scale_spatial=16)
    condition = pipe.prepare_image_condition(first, plan, 1, torch.device("cpu"))
    for stage, geometry in enumerate(plan.geometry):
        expected = condition.latents[geometry.latent]  # (1, 48, 1, h, w)
        assert expected.shape[2] == 1 and data.latents[stage].shape[2] > 1
        torch.testing.assert_close(data.latents[stage][:1, :, :1], expected, atol=1e-5, rtol=1e-5)


def _row_subsets(batch: int, size: int):
    """The contiguous row slices of `size` out of `batch` (the objectives split a batch into groups)."""
    return [slice(start, start + size) for start in range(batch - size + 1)]


def _check_clean_first_frame(hidden, timestep, batch, repeats=1):
    """One transformer call of an image-to-video batch: frame 0 is the clean first frame of the stage's
    cached latent (of some rows of the batch) and exactly its tokens (patch 1x2x2) have timestep 0."""
    first = hidden.shape[3] * hidden.shape[4] // 4
    assert timestep.shape == (hidden.shape[0], hidden.shape[2] * first)
    assert (timestep[:, :first] == 0).all() and (timestep[:, first:] > 0).all()
    assert (timestep[:, first:] == timestep[:, -1:]).all()  # one level for every generated token
    clean = {tuple(x.shape[3:]): x[:, :, :1] for x in batch["latents"]}[tuple(hidden.shape[3:])]
    rows = hidden.shape[0] // repeats
    assert any(
        torch.equal(hidden[:, :, :1], clean[subset].repeat(repeats, 1, 1, 1, 1))
        for subset in _row_subsets(clean.shape[0], rows)
    )


def _perturb_first_frame(module, args, output):
    """A forward hook: the transformer's prediction on latent frame 0 moved far away."""
    velocity = output[0].clone()
    velocity[:, :, 0] += 1000.0
    return (velocity, *output[1:])


def _losses(loss_fns, batch, transformers, perturb: bool) -> list[torch.Tensor]:
    hooks = [t.register_forward_hook(_perturb_first_frame) for t in transformers] if perturb else []
    try:
        return [fn(batch, torch.Generator().manual_seed(0))[0].detach() for fn in loss_fns]
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("objective", ["pyramidal", "multires-fm"])
def test_image_to_video_rows_take_the_clean_first_frame_at_timestep_zero_and_no_loss_there(
    ti2v, tmp_path, objective
):
    root, _, _ = ti2v
    model = root / "model"
    config = train_config(
        root / "cache",
        tmp_path / "run",
        f"model.init={model}",
        f"objective.name={objective}",
        "data.image_to_video=1",
    )
    built = build_objective(config)
    data = CachedLatents(root / "cache")
    batch = sample_batch(data, 3, 0.0, torch.Generator().manual_seed(0), torch.device("cpu"), 1.0)
    assert batch["image_rows"].all()
    transformer = built.nets["generator"].transformer
    calls = []
    hook = transformer.register_forward_pre_hook(
        lambda m, a, kw: calls.append((kw["hidden_states"], kw["timestep"])), with_kwargs=True
    )
    try:
        loss, _ = built.generator_loss(batch, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert torch.isfinite(loss) and len(calls) == 3  # one call per stage group
    for hidden, timestep in calls:
        _check_clean_first_frame(hidden, timestep, batch)
    # The loss does not depend on what the model predicts on the given frame; text-to-video rows it does.
    fns = [built.generator_loss]
    assert torch.equal(*(_losses(fns, batch, [transformer], p)[0] for p in (False, True)))
    text_only = {k: v for k, v in batch.items() if k != "image_rows"}
    assert not torch.equal(*(_losses(fns, text_only, [transformer], p)[0] for p in (False, True)))


def test_a_mixed_batch_leaves_only_the_image_rows_first_frame_out_of_the_loss():
    batch = {"image_rows": torch.tensor([True, False, True])}
    weights = generated_frames(batch, torch.zeros(3, 4, 5, 2, 2))
    assert weights.shape == (3, 1, 5, 1, 1)
    assert weights[:, 0, :, 0, 0].tolist() == [[0, 1, 1, 1, 1], [1] * 5, [0, 1, 1, 1, 1]]
    assert generated_frames({"image_rows": torch.tensor([False, False])}, torch.zeros(2, 4, 5, 2, 2)) is None
    assert generated_frames(batch, torch.zeros(3, 4, 1, 2, 2)) is None  # single frames: text-to-image


def _transformers(objective) -> list:
    """Every transformer an objective runs: the student, teacher, fake score."""
    nets = [*objective.nets.values(), objective.teacher]
    found = {id(m): m for net in nets for m in net.modules() if isinstance(m, WanTransformer3DModel)}
    return list(found.values())


@pytest.mark.parametrize(
    "student_input, teach_weight", [("data", "0.01"), ("backward", "0")], ids=["data", "backward"]
)
def test_dmd_ot_gives_every_network_the_clean_first_frame(ti2v, tmp_path, student_input, teach_weight):
    """Student (and its backward simulation), teacher (CFG's doubled batch) and fake score all get the clean
    first frame at timestep 0; neither loss depends on any network's prediction there; 2 steps train and
    the exported few-step folder samples image-to-video at its 2-2-1 default."""
    root, parts, _ = ti2v
    model = root / "model"
    config = train_config(
        root / "cache",
        tmp_path / "run",
        f"model.init={model}",
        "objective.name=dmd-ot",
        f"objective.teacher={model}",
        "objective.teacher_uncond=empty",
        "objective.critic_ratio=1",
        "objective.schedule=2-2-1",
        f"objective.student_input={student_input}",
        f"objective.teach_weight={teach_weight}",
        "data.image_to_video=1",
    )
    built = build_objective(config)
    data = CachedLatents(root / "cache")
    batch = sample_batch(data, 3, 0.0, torch.Generator().manual_seed(0), torch.device("cpu"), 1.0)
    transformers = _transformers(built)
    assert len(transformers) == 3
    calls = {}
    hooks = [
        t.register_forward_pre_hook(
            lambda m, a, kw: calls.setdefault(id(m), []).append((kw["hidden_states"], kw["timestep"])),
            with_kwargs=True,
        )
        for t in transformers
    ]
    fns = [built.generator_loss, built.critic_loss]
    try:
        losses = _losses(fns, batch, transformers, False)
    finally:
        for hook in hooks:
            hook.remove()
    assert all(torch.isfinite(loss) for loss in losses)
    assert len(calls) == 3  # every network ran
    for hidden, timestep in (call for per_model in calls.values() for call in per_model):
        _check_clean_first_frame(hidden, timestep, batch, repeats=hidden.shape[0] // 3)
    for clean, perturbed in zip(losses, _losses(fns, batch, transformers, True)):
        assert torch.equal(clean, perturbed)

    if student_input == "backward":  # end to end: train, export, sample with an image through the CLI
        out = train(config, progress=False)
        trained = load_transformer(out / "model" / "transformer")
        before = parts["transformer"].state_dict()
        assert any(not torch.equal(v, before[k]) for k, v in trained.state_dict().items())
        conditioning_image().save(tmp_path / "first.png")
        video = tmp_path / "video.mp4"
        args = ["--model", str(out / "model"), "--out", str(video), "--image", str(tmp_path / "first.png")]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["generate", PROMPT, *args, "--threads", "1"]) == 0
        assert "schedule 2-2-1 (fewstep" in printed.getvalue()
        assert read_video(video).shape == (17, 128, 128, 3)


def test_a_pyramidal_image_to_video_fine_tune_trains_and_samples_from_the_image(ti2v, tmp_path):
    root, parts, _ = ti2v
    config = train_config(
        root / "cache",
        tmp_path / "run",
        f"model.init={root / 'model'}",
        "objective.name=pyramidal",
        "data.image_to_video=0.5",
        "train.checkpoint_every=2",
    )
    out = train(config, progress=False)
    trained = load_transformer(out / "model" / "transformer")
    before = parts["transformer"].state_dict()
    assert trained.config.in_channels == TI2V_CHANNELS
    assert any(not torch.equal(v, before[k]) for k, v in trained.state_dict().items())
    pipe = PyramidalWanPipeline.from_pretrained(out / "model")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_mode == "first_frame"
    image = conditioning_image(150, 140)
    latents = pipe(
        PROMPT,
        image=image,
        schedule="2-2-2",
        sampler="multistep",
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).frames
    assert latents.shape == (1, TI2V_CHANNELS, 5, 8, 8) and torch.isfinite(latents).all()
    pixels = pipe.video_processor.preprocess(image, height=128, width=128)
    torch.testing.assert_close(latents[:, :, :1], LatentEncoder(pipe.vae)(pixels[:, :, None]))


@pytest.mark.parametrize(
    "case, message",
    [
        ("transformer-folder", "has no model_index.json setting expand_timesteps: set model.pipeline"),
        ("adv-p", "adv-p does not train clean-first-frame image-to-video; use one of flow-matching, multi"),
        ("latent-cache", "needs a pixel-construction cache"),
        ("i2v-model", "is an image-to-video model (image conditioning clip) that always trains on its image"),
        ("text-to-video-teacher", "image conditioning differs (model.init first_frame, objective.teacher"),
    ],
)
def test_bad_image_to_video_training_is_a_one_line_error(ti2v, tmp_path, capsys, case, message):
    root, _, _ = ti2v
    cache, model, objective = root / "cache", root / "model", "pyramidal"
    extra = []
    if case == "transformer-folder":  # a TI2V transformer alone does not record expand_timesteps
        model = root / "init"
    elif case == "adv-p":
        objective = "adv-p"
    elif case == "latent-cache":
        cache = tmp_path / "latent-cache"
        derive_latent_cache(root / "cache", cache)
    elif case == "i2v-model":  # a config.json is all the check reads
        model = tmp_path / "i2v"
        WanTransformer3DModel.from_config(TINY_I2V_TRANSFORMER).save_config(model)
    else:
        objective = "dmd-ot"
        extra = [f"objective.teacher={root / 'init'}"]
    run = tmp_path / "run"
    overrides = [f"data.cache={cache}", f"train.out={run}", f"model.init={model}", "model.pipeline=None"]
    overrides += [f"objective.name={objective}", "data.image_to_video=0.5", "train.steps=1", *extra]
    assert main(["finetune", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (run / "checkpoint").exists() and not (run / "config.yaml").exists()
