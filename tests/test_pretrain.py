"""Pre-training (`glip pretrain`), the shipped nano weights (`--model nano`) and `glip bench synthetic`.

Everything runs on a tiny random GLIP (a 1-layer, 32-wide random text encoder, frozen) and tiny
synthetic data, in seconds; the export tests that need all-MiniLM-L6-v2 skip without its package."""

from __future__ import annotations

import dataclasses
import json
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from glipcli.checkpoint import save_safetensors
from glipcli.cli.main import main
from glipcli.config import (FPNConfig, GLIPConfig, HeadConfig, InputConfig, LanguageConfig, SwinConfig,
                            get_preset)
from glipcli.nano.pretrain_data import (PretrainCollate, PretrainDataset, PretrainRecord, GroundedCaption,
                                        TextSettings, WorldSource, sample_detection_labels, sample_text,
                                        swap_left_right, with_steps)
from glipcli.nano.synthetic import WorldConfig
from glipcli.nano.export import export_weights, own_state
from glipcli.nano.pretrain import PretrainConfig, Pretrainer, TextEncoderCache, lr_factor
from glipcli.errors import GlipError
from glipcli.losses import GLIPLoss, TrainTarget
from glipcli.modeling.glip import GLIP
from glipcli.nano import minilm

needs_minilm = pytest.mark.skipif(not minilm.minilm_available(),
                                  reason=f"needs the package {minilm.PACKAGE}")

TINY = GLIPConfig(
    name="tiny-pretrain",
    swin=SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=7, drop_path_rate=0.1),
    fpn=FPNConfig(out_channels=32, drop_block_prob=0.0),
    language=LanguageConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    head=HeadConfig(channels=32, num_layers=1, fusion_embed_dim=64, fusion_heads=2),
    input=InputConfig(min_size=96, max_size=128),
)
SMALL_WORLD = WorldConfig(size_range=(112, 144), objects_range=(1, 3), supersample=2)


def _tiny_model(seed: int = 0) -> GLIP:
    torch.manual_seed(seed)
    return GLIP(TINY)


def _world(images: int = 16) -> WorldSource:
    return WorldSource(seed=0, images=images, config=SMALL_WORLD)


def _config(**changes) -> PretrainConfig:
    base = dict(seed=0, steps=6, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_minutes=0.0, log_every=1)
    return PretrainConfig(**{**base, **changes})


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


# -- training text ---------------------------------------------------------------------------------------
def test_detection_prompt_holds_every_positive_and_sampled_negatives():
    names = [f"{c} {s}" for s in ("circle", "square", "star", "ring") for c in ("red", "blue", "green", "pink")]
    seen_lengths, orders = set(), set()
    for trial in range(60):
        rng = random.Random(trial)
        labels = sample_detection_labels([0, 5, 5], names, rng, max_labels=6, hard_share=1.0)
        assert {0, 5} <= set(labels) and len(labels) == len(set(labels)) and len(labels) <= 6
        negatives = [names[c] for c in labels if c not in (0, 5)]
        # every negative shares a word with a positive ("red", "circle", "blue", "square")
        assert all({"red", "circle", "blue", "square"} & set(n.split()) for n in negatives)
        seen_lengths.add(len(labels))
        orders.add(labels.index(0) < labels.index(5))
    assert len(seen_lengths) > 2 and orders == {True, False}  # random counts, shuffled order
    # more positives than max_labels: all positives are kept, no negative
    assert sorted(sample_detection_labels(list(range(8)), names, random.Random(0), max_labels=4)) == list(range(8))
    assert sample_detection_labels([1], names, random.Random(3), 5) == sample_detection_labels([1], names,
                                                                                               random.Random(3), 5)


def test_mirrored_caption_swaps_left_and_right_with_its_spans():
    text = "a red circle to the left of the blue square"
    spans = [(0, 12), (28, 43)]
    mirrored, moved = swap_left_right(text, spans)
    assert mirrored == "a red circle to the right of the blue square"
    assert [mirrored[s:e] for s, e in moved] == ["a red circle", "the blue square"]
    back, again = swap_left_right(mirrored, moved)
    assert (back, list(again)) == (text, spans)
    assert swap_left_right("a star above a ring", [(0, 6)]) == ("a star above a ring", ((0, 6),))


def test_sample_text_is_a_detection_prompt_or_a_caption():
    record = PretrainRecord(image=None, boxes=np.array([[1, 1, 9, 9], [20, 20, 30, 30]], np.float32),
                            labels=np.array([2, 0]), captions=[GroundedCaption(
                                "two red circles", ((0, 15),), np.array([[1, 1, 9, 9]], np.float32), np.array([0]))])
    names = ["red circle", "blue square", "green star", "pink ring"]
    for trial in range(20):
        text = sample_text(record, names, random.Random(trial), TextSettings(max_labels=3), grounding=False)
        assert text.kind == "detection" and len(text.phrases) <= 3
        assert [text.phrases[p].text for p in text.phrase_of_box] == ["green star", "red circle"]
        text = sample_text(record, names, random.Random(trial), TextSettings(max_labels=3), grounding=True)
        assert text.caption == "two red circles" and text.phrase_of_box.tolist() == [0]
    no_caption = dataclasses.replace(record, captions=[])
    assert sample_text(no_caption, names, random.Random(0), TextSettings(), grounding=True).kind == "detection"


def test_attribute_naming_names_every_box_by_one_attribute_with_negatives_of_that_attribute():
    source = _world()
    shapes, colours = (set(source.category_groups[g]) for g in ("shape", "colour"))
    full = set(range(len(source.categories))) - shapes - colours
    record = next(r for r in map(source.record, range(20)) if len(r.boxes) >= 2)
    kinds = set()
    for trial in range(60):
        text = sample_text(record, source.categories, random.Random(trial),
                           TextSettings(attribute_share=0.6, max_labels=8), False, source.category_groups)
        names = [p.text for p in text.phrases]
        index = [source.categories.index(n) for n in names]
        group = next(g for g, members in (("shape", shapes), ("colour", colours), ("full", full))
                     if set(index) <= members)  # one naming per prompt: never "red" beside "red circle"
        kinds.add(group)
        for box, phrase in enumerate(text.phrase_of_box):
            colour, shape = source.categories[record.labels[box]].split()
            assert names[phrase] == {"shape": shape, "colour": colour, "full": f"{colour} {shape}"}[group]
    assert kinds == {"shape", "colour", "full"}
    # share 0: always the full names
    plain = [sample_text(record, source.categories, random.Random(t), TextSettings(), False, source.category_groups)
             for t in range(10)]
    assert all(len(p.phrases[0].text.split()) == 2 for p in plain)
    with pytest.raises(GlipError, match="attribute-labels"):
        TextSettings(attribute_share=1.5)


def test_world_samples_are_grounded_and_deterministic():
    source = _world()
    # the second edition's vocabulary: 17 seen shapes x 12 colours - 6 held-out pairs = 198
    # colour-shape names, then the 17 shapes and the 12 colours
    assert len(source.categories) == 198 + 17 + 12
    assert [source.categories[i] for i in source.category_groups["shape"]][:2] == ["circle", "square"]
    assert len(source.category_groups["colour"]) == 12
    assert not {"purple star", "orange circle"} & set(source.categories)  # held-out combinations
    assert not any(n.endswith("arrow") for n in source.categories)  # the held-out shape
    dataset = PretrainDataset(source, TINY.input, TextSettings(grounding_ratio=0.5), seed=0)
    keys = with_steps([[(0, p, p) for p in range(12)]])[0]
    samples = [dataset[k] for k in keys]
    assert len({s.kind for s in samples}) == 1 and len({min(s.size) for s in samples}) == 1  # one kind, one scale
    plans = {dataset.batch_plan(0, step) for step in range(40)}
    assert {g for _, g in plans} == {True, False} and {s for s, _ in plans} == set(dataset.sizes)
    for step in range(6):
        scale, grounding = dataset.batch_plan(0, step)
        sample = dataset[(0, 0, 0, step)]
        assert sample.kind == ("grounding" if grounding else "detection") and min(sample.size) == scale
    for s in samples:
        assert s.boxes.shape[0] == s.positive_map.shape[0] > 0
        assert (s.positive_map.sum(-1) > 0).all() and s.positive_map.shape[1] == s.input_ids.shape[0]
        h, w = s.size
        assert (s.boxes[:, 0] >= 0).all() and (s.boxes[:, 2] <= w).all() and (s.boxes[:, 3] <= h).all()
    again = dataset[keys[3]]
    assert torch.equal(again.image, samples[3].image) and torch.equal(again.input_ids, samples[3].input_ids)
    batch = PretrainCollate(32)(samples[:4])
    assert batch.images.shape[0] == 4 and batch.images.shape[-1] % 32 == 0


def test_text_features_are_the_same_from_the_cache_and_padded():
    model = _tiny_model().eval()
    cache = TextEncoderCache(model, capacity=8, device=torch.device("cpu"))
    short, long = torch.tensor([101, 2417, 4418, 102]), torch.tensor([101, 2417, 4418, 1012, 2630, 2675, 102])
    first = cache.batch([short, long])
    second = cache.batch([long, short])
    assert cache.hits == 2 and cache.misses == 2
    assert torch.equal(first.hidden[0, :4], second.hidden[1, :4]) and (first.hidden[0, 4:] == 0).all()
    assert first.mask.tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    with torch.no_grad():
        alone = model.encode_text(long[None], torch.ones(1, 7, dtype=torch.long)).hidden[0]
    assert torch.equal(first.hidden[1], alone)


def test_lr_schedule_warms_up_then_decays():
    cfg = _config(steps=100, warmup_steps=10, min_lr_factor=0.01)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.001)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.505)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.01)
    assert lr_factor(50, None, cfg) == 1.0  # horizon not known yet (a time budget calibrating)
    step = dataclasses.replace(cfg, schedule="step")
    assert [lr_factor(s, 100, step) for s in (20, 67, 89)] == pytest.approx([1.0, 0.1, 0.01])


def test_docs_record_the_nano_command():
    from glipcli.hub import NANO_PRETRAIN_COMMAND

    nano_doc = (Path(__file__).resolve().parents[1] / "docs" / "nano.md").read_text(encoding="utf-8")
    assert NANO_PRETRAIN_COMMAND in nano_doc and "--seed 0" in NANO_PRETRAIN_COMMAND


def test_config_is_checked():
    with pytest.raises(GlipError, match="--steps N, --epochs N or --minutes M"):
        PretrainConfig()
    with pytest.raises(GlipError, match="--schedule"):
        PretrainConfig(steps=1, schedule="linear")
    with pytest.raises(GlipError, match="--hard-negatives"):
        PretrainConfig(steps=1, hard_negatives=2.0)


# -- training ----------------------------------------------------------------------------------------------
def _fixed_batch_loss(model: GLIP, source, seed: int = 99) -> float:
    dataset = PretrainDataset(source, model.cfg.input, TextSettings(), seed=seed, augment=False)
    batch = PretrainCollate(32)([dataset[(0, p, p, 0)] for p in range(len(source))])
    model.eval()
    with torch.no_grad():
        text = TextEncoderCache(model, 0, torch.device("cpu")).batch(batch.input_ids)
        out = model(batch.images, text)
        losses = GLIPLoss(model.cfg)(out, [TrainTarget(b, m) for b, m in zip(batch.boxes, batch.positive_maps)],
                                     text.mask)
    return float(sum(losses.values()))


def test_tiny_pretraining_lowers_the_loss(tmp_path):
    source = _world(images=4)
    model = _tiny_model()
    text_before = {k: v.clone() for k, v in model.language.state_dict().items()}
    before = _fixed_batch_loss(model, source)
    modes = []

    def check_modes(info):  # the text encoder runs in eval mode; no dropout anywhere (the default)
        modes.append((model.training, model.language.training,
                      max(getattr(m, "drop_prob", 0.0) for m in model.modules()),
                      max(m.p for m in model.modules() if isinstance(m, torch.nn.Dropout))))

    result = Pretrainer(model, source, _config(steps=30, batch_size=4, lr=2e-3, warmup_steps=3), tmp_path / "run",
                        progress=False, step_callback=check_modes).fit()
    assert set(modes) == {(True, False, 0.0, 0.0)}
    after = _fixed_batch_loss(model, source)
    assert after < 0.8 * before, (before, after)
    assert result.state.finished and result.state.stop_reason == "steps" and result.state.global_step == 30
    # the text encoder is frozen: untouched by training
    assert all(torch.equal(v, text_before[k]) for k, v in model.language.state_dict().items())
    events = [e["event"] for e in _log(tmp_path / "run")]
    assert events[0] == "start" and events.count("step") == 30 and events[-2:] == ["checkpoint", "end"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["kind"] == "glip-pretrain" and run["source"]["kind"] == "world" and len(run["categories"]) == 227
    assert result.model_path == tmp_path / "run" / "model.safetensors" and result.model_path.is_file()


def test_schedule_steps_replays_a_run_cut_short_by_its_budget(tmp_path):
    """`--steps N --schedule-steps H`: the learning rate follows an H-step schedule, the run stops at N."""
    source = _world(images=4)
    cfg = _config(steps=4, schedule_steps=10, batch_size=2, warmup_steps=2)
    result = Pretrainer(_tiny_model(), source, cfg, tmp_path / "run", progress=False).fit()
    assert result.state.global_step == 4 and result.state.horizon == 10 and result.state.stop_reason == "steps"
    lrs = [e["lr"] for e in _log(tmp_path / "run") if e["event"] == "step"]
    assert lrs == pytest.approx([cfg.lr * lr_factor(k, 10, cfg) for k in range(4)])
    assert lr_factor(3, 10, cfg) > lr_factor(3, 4, cfg)  # not the 4-step schedule


@pytest.mark.slow
def test_tiny_pretraining_learns_to_detect_its_images(tmp_path):
    """End to end (about 30 s): detection prompts, boxes and token targets are right if a tiny model
    pre-trained on 4 world images detects them (the engine's COCO AP, their categories as the prompt)."""
    from glipcli.data.coco import load_coco
    from glipcli.nano.synthetic import CategoryScheme, write_coco_dataset
    from glipcli.data.training_prompt import build_training_prompt
    from glipcli.engine.evaluate import evaluate

    source = _world(images=4)
    present = sorted({source.categories[int(c)] for i in range(4) for c in source.record(i).labels})
    write_coco_dataset(tmp_path / "data", 4, 0, 0, seed=0, task="pretrain", config=SMALL_WORLD,
                       categories=CategoryScheme("colour-shape", tuple(present)))  # the same 4 scenes
    data = load_coco(tmp_path / "data" / "train" / "_annotations.coco.json")
    model = _tiny_model()
    config = _config(steps=300, batch_size=4, lr=3e-3, warmup_steps=5, augment=False, grounding_ratio=0.0,
                     log_every=50)
    Pretrainer(model, source, config, tmp_path / "run", progress=False).fit()
    result = evaluate(model, data, build_training_prompt(data.classes, 256), 4, "cpu")
    assert result.metrics["AP50"] >= 0.6, result.metrics


def test_resume_continues_exactly(tmp_path):
    config = _config(steps=6)
    straight = _tiny_model()
    Pretrainer(straight, _world(), config, tmp_path / "a", progress=False).fit()

    def stop_at_3(info):
        if info.global_step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Pretrainer(_tiny_model(), _world(), config, tmp_path / "b", progress=False, step_callback=stop_at_3).fit()
    assert json.loads((tmp_path / "b" / "checkpoints" / "latest.json").read_text())["global_step"] == 3
    resumed = _tiny_model(seed=123)  # weights come from the checkpoint
    result = Pretrainer(resumed, _world(), config, tmp_path / "b", resume=True, progress=False).fit()
    assert result.state.global_step == 6 and result.state.finished
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(GlipError, match="--resume: .*--lr 0.001 \\(given: 0.01\\)"):
        Pretrainer(_tiny_model(), _world(), dataclasses.replace(config, lr=0.01), tmp_path / "b", resume=True,
                   progress=False).fit()
    with pytest.raises(GlipError, match="already holds a pre-training run"):
        Pretrainer(_tiny_model(), _world(), config, tmp_path / "b", progress=False).fit()


class _FakeClock:
    """Each reading is `tick` seconds after the previous one (a deterministic wall clock)."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_time_budget_sets_the_schedule_then_stops_and_saves(tmp_path):
    config = _config(steps=None, minutes=0.5, calibration_steps=3, warmup_steps=2)
    result = Pretrainer(_tiny_model(), _world(), config, tmp_path / "run", progress=False,
                        clock=_FakeClock(0.5)).fit()
    state = result.state
    assert state.finished and state.stop_reason in ("schedule", "time budget")
    assert state.train_seconds <= 30.0 and state.global_step >= 5
    log = _log(tmp_path / "run")
    calibration = [e for e in log if e["event"] == "calibration"]
    assert len(calibration) == 1 and calibration[0]["global_step"] == 5
    assert state.horizon == calibration[0]["horizon"] and state.global_step <= state.horizon
    assert log[-1]["event"] == "end" and (tmp_path / "run" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["global_step"] == state.global_step


def test_time_budget_cuts_a_longer_run(tmp_path):
    config = _config(steps=10_000, minutes=0.2)
    state = Pretrainer(_tiny_model(), _world(), config, tmp_path / "run", progress=False,
                       clock=_FakeClock(0.5)).fit().state
    assert state.stop_reason == "time budget" and state.finished and 2 <= state.global_step < 10_000
    assert state.train_seconds <= 12.0
    again = Pretrainer(_tiny_model(), _world(), config, tmp_path / "run", resume=True, progress=False).fit()
    assert again.state.global_step == state.global_step  # a finished run is not continued


def test_pretrain_command_on_a_synth_data_folder(tmp_path, capsys):
    init = tmp_path / "tiny.safetensors"
    save_safetensors(_tiny_model(), init)
    assert main(["synth-data", str(tmp_path / "data"), "--train", "6", "--valid", "0", "--test", "0", "--size",
                 "112-144", "--objects", "1-3", "-q"]) == 0
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(tmp_path / "data"), "--init", str(init), "--steps", "3", "--batch-size", "2",
            "--warmup-steps", "1", "--output", str(out), "--no-progress"]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["source"]["kind"] == "coco" and run["source"]["captions"] == 12
    assert run["text_encoder"] == {"kind": "checkpoint", "path": str(init.resolve()), "minilm": False}
    capsys.readouterr()
    assert main(["pretrain", "--output", str(out), "--resume", "--no-progress"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    # the tiny model's text encoder is not the packaged MiniLM: it cannot be shipped without it
    code = main(["pretrain", "--output", str(out), "--resume", "--no-progress", "--export", str(tmp_path / "x.st")])
    assert code == 2 and "packaged all-MiniLM-L6-v2" in capsys.readouterr().err
    code = main(["pretrain", "--output", str(out), "--resume", "--steps", "5"])
    assert code == 2 and "was started with --steps 3" in capsys.readouterr().err


# -- shipping the nano weights -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nano_minilm():
    if not minilm.minilm_available():
        pytest.skip(f"needs the package {minilm.PACKAGE}")
    torch.manual_seed(0)
    model = GLIP(get_preset("nano"))
    minilm.load_minilm(model)
    return model.eval()


@needs_minilm
def test_export_leaves_out_the_text_encoder_and_reloads_to_identical_outputs(nano_minilm, tmp_path):
    from glipcli.prompts.encoding import encode_class_names
    from glipcli.weights import ModelSource, load_model

    path = export_weights(nano_minilm, tmp_path / "nano.safetensors", extra_metadata={"note": "test"})
    with safe_open(str(path), framework="pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in keys}
    assert keys and not any(k.startswith("language.") for k in keys)
    assert set(keys) == set(own_state(nano_minilm)) and torch.float32 not in dtypes
    assert path.stat().st_size <= 15_000_000 and metadata["note"] == "test"
    assert json.loads(metadata["text_encoder"])["sha256"] == minilm.WEIGHTS_SHA256

    loaded = load_model(ModelSource(None, path)).eval()
    reference = GLIP(nano_minilm.cfg).eval()  # what the float16 file holds: the weights rounded to float16
    reference.load_state_dict({k: (v.half().float() if v.is_floating_point() and not k.startswith("language.")
                                   else v) for k, v in nano_minilm.state_dict().items()})
    prompt = encode_class_names(["red circle", "blue square"])
    n = prompt.num_tokens
    images = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        outs = [m(images, m.encode_text(prompt.input_ids[:, :n], prompt.attention_mask[:, :n]))
                for m in (loaded, reference)]
    for a, b in zip(outs[0].head.token_logits + outs[0].head.box_regression,
                    outs[1].head.token_logits + outs[1].head.box_regression):
        assert torch.equal(a, b)


@needs_minilm
def test_model_nano_loads_the_packaged_file(nano_minilm, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from glipcli import hub
    from glipcli.weights import load_model, resolve_model_source

    assets = tmp_path / "assets"
    assets.mkdir()
    export_weights(nano_minilm, assets / "glip_nano.safetensors")
    monkeypatch.setattr(hub, "ASSETS_DIR", assets)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    source = resolve_model_source("nano")
    assert source.weights == assets / "glip_nano.safetensors" and source.config == get_preset("nano")
    model = load_model(source)
    assert torch.equal(model.language.bert.embeddings.word_embeddings.weight,
                       nano_minilm.language.bert.embeddings.word_embeddings.weight)
    # anything missing besides the text encoder is an error naming it
    state = load_file(str(assets / "glip_nano.safetensors"))
    del state["head.bias0"]
    with safe_open(str(assets / "glip_nano.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    save_file(state, str(tmp_path / "broken.safetensors"), metadata=metadata)
    with pytest.raises(GlipError, match="missing head.bias0"):
        load_model(resolve_model_source(weights=tmp_path / "broken.safetensors"))


def test_model_nano_without_the_packaged_file_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    from glipcli import hub
    from glipcli.weights import resolve_model_source

    monkeypatch.setattr(hub, "ASSETS_DIR", tmp_path / "empty")
    with pytest.raises(GlipError, match="glip_nano.safetensors is missing.*glip pretrain --preset nano --seed 0"):
        resolve_model_source("nano")
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    capsys.readouterr()
    assert main(["detect", str(image), "--model", "nano", "-p", "red circle"]) == 2
    err = capsys.readouterr().err
    assert "glip pretrain" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_checkpoint_without_text_encoder_needs_minilm_sizes(tmp_path):
    from safetensors.torch import save_file

    from glipcli.checkpoint import config_metadata
    from glipcli.weights import load_model, resolve_model_source

    state = own_state(_tiny_model())
    save_file(state, str(tmp_path / "tiny.safetensors"), metadata=config_metadata(TINY))
    with pytest.raises(GlipError, match="no text-encoder weights.*not all-MiniLM-L6-v2"):
        load_model(resolve_model_source(weights=tmp_path / "tiny.safetensors"))


# -- the synthetic benchmark ---------------------------------------------------------------------------------
def test_bench_synthetic_end_to_end(tmp_path, capsys):
    weights = tmp_path / "tiny.safetensors"
    save_safetensors(_tiny_model(), weights)
    out = tmp_path / "bench"
    args = ["bench", "synthetic", "--weights", str(weights), "--images", "3", "--train-images", "4",
            "--valid-images", "2", "--shots", "1", "--epochs", "1", "--output", str(out), "--device", "cpu",
            "--val-shots", "0", "--patience", "3"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "synthetic: tiny.safetensors" in table and "AP50" in table and "target" in table
    results = json.loads((out / "results.json").read_text())
    settings = [r["setting"] for r in results["rows"]]
    assert len(results["rows"]) == 12 and "zero-shot, plain names" in settings
    assert any(s.startswith("synonym: 'tangerine disc'") for s in settings)
    assert any(s.startswith("descriptive: 'round shape'") for s in settings)
    assert all(0.0 <= (r["ap50"] or 0.0) <= 1.0 for r in results["rows"])
    markdown = (out / "results.md").read_text()
    assert markdown.count("\n| ") == 13  # header + 12 rows
    assert set(results["cells"]) == {"unseen-combos/plain", "unseen-combos/synonym", "unseen-combos/descriptive",
                                     "novel-shape/zero-shot", "novel-shape/finetune", "novel-shape/prompt-tune",
                                     "seen-shapes/plain", "seen-shapes/synonym", "seen-shapes/descriptive"}
    assert results["cells"]["novel-shape/prompt-tune"]["train_images"] >= 1
    assert not (out / "runs" / "novel-shape-full-1shot" / "model_best.safetensors").exists()
    for task in ("full", "prompt"):  # the tuning runs got the bench's settings
        start = json.loads((out / "runs" / f"novel-shape-{task}-1shot" / "log.jsonl").read_text().splitlines()[0])
        assert start["config"]["val_shots"] == 0 and start["config"]["stop_patience"] == 3
        assert start["config"]["epochs"] == 1 and start["config"]["shots"] == 1
    # a re-run reads the finished cells back; another model in the same folder is refused
    assert main(args) == 0
    other = tmp_path / "other.safetensors"
    save_safetensors(_tiny_model(seed=1), other)
    assert main([*args[:3], str(other), *args[4:]]) == 2
    assert "another model" in capsys.readouterr().err


def test_synthetic_table_judges_prompt_tuning_only_against_a_real_fine_tuning_gain():
    from glipcli.nano.bench import table_rows

    def cells(zero, full, prompt):
        out = {f"{s}/{w}": {"metrics": {"AP": 0.1, "AP50": 0.6}, "caption": "x"}
               for s in ("unseen-combos", "seen-shapes") for w in ("plain", "synonym", "descriptive")}
        for name, ap50 in (("zero-shot", zero), ("finetune", full), ("prompt-tune", prompt)):
            out[f"novel-shape/{name}"] = {"metrics": {"AP": 0.1, "AP50": ap50}}
        return out

    def recovery(rows):
        return next(r for r in rows if r.setting == "prompt-tuning gain recovered")

    real = table_rows(cells(0.3, 0.7, 0.6), 5)  # gain 0.4, prompt tuning recovers 75%
    assert recovery(real).value == "75%" and recovery(real).met is True
    assert next(r for r in real if r.target.startswith("AP50 gain")).met is True
    weak = table_rows(cells(0.38, 0.39, 0.44), 5)  # a gain of 0.01: a share of it means nothing
    assert recovery(weak).met is None and "n/a" in recovery(weak).value
    assert table_rows(cells(0.4, 0.3, 0.5), 5)[-7].value == "n/a (no fine-tuning gain)"
    assert real[0].met is True and real[0].ap50 == 0.6  # unseen combinations, zero-shot


def test_world_edition_picks_the_pretraining_world(tmp_path, capsys):
    from glipcli.cli.main import main as cli_main
    from glipcli.nano.pretrain_runs import new_source
    from glipcli.nano.synthetic import CLASSIC_SHAPES, WORLD_EDITIONS

    first, second = new_source(None, 10, 0, 1), new_source(None, 10, 0)
    assert first.world.config == WORLD_EDITIONS[1] and second.world.config == WORLD_EDITIONS[2]
    assert [first.categories[i] for i in first.category_groups["shape"]] == [s for s in CLASSIC_SHAPES if s != "arrow"]
    assert len(first.categories) == 102 + 9 + 12 and len(second.categories) == 198 + 17 + 12
    with pytest.raises(GlipError, match="--world-edition"):
        new_source(tmp_path, None, 0, 1)
    code = cli_main(["pretrain", "--world-edition", "3", "--steps", "1", "--output", str(tmp_path / "run")])
    assert code == 2 and "--world-edition" in capsys.readouterr().err and not (tmp_path / "run").exists()
