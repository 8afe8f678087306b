"""Swin + FPN visual backbone: golden numerics, checkpoint naming, odd sizes, training-only parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glipcli.config import FPNConfig, SwinConfig
from glipcli.modeling.backbone import FPN, DropBlock2D, SwinTransformer, VisualBackbone
from glipcli.modeling.backbone.swin import SwinStage, shifted_window_mask

TINY_SWIN = SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
TINY_FPN = FPNConfig(out_channels=64)
GLIP_L_SWIN = SwinConfig(
    embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12
)

_FPN_RENAMES = {
    "fpn_inner2": "lateral_convs.0",
    "fpn_inner3": "lateral_convs.1",
    "fpn_inner4": "lateral_convs.2",
    "fpn_layer2": "output_convs.0",
    "fpn_layer3": "output_convs.1",
    "fpn_layer4": "output_convs.2",
    "top_blocks.p6": "p6",
    "top_blocks.p7": "p7",
}


def _local_name(official: str) -> str | None:
    """Official `backbone.*` key -> VisualBackbone key; None for keys that are not loaded."""
    if official.endswith("relative_position_index"):
        return None
    if official.startswith("backbone.body."):
        return "swin." + official.removeprefix("backbone.body.")
    if official.startswith("backbone.fpn."):
        rest = official.removeprefix("backbone.fpn.")
        for old, new in _FPN_RENAMES.items():
            if rest.startswith(old + "."):
                return "fpn." + new + rest[len(old) :]
    return None


def _official_shapes(keys_json: Path) -> dict[str, tuple[int, ...]]:
    entries = json.loads(keys_json.read_text())["entries"]
    shapes = {}
    for entry in entries:
        local = _local_name(entry["model_key"])
        if local is not None:
            shapes[local] = tuple(entry["shape"])
    return shapes


@pytest.fixture(scope="module")
def tiny_backbone(golden_dir: Path) -> VisualBackbone:
    weights = load_file(golden_dir / "tiny" / "weights.safetensors")
    state = {}
    for key, value in weights.items():
        local = _local_name(key)
        if local is not None:
            state[local] = value
    model = VisualBackbone(TINY_SWIN, TINY_FPN)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_image(golden_dir: Path) -> torch.Tensor:
    return load_file(golden_dir / "tiny" / "inputs.safetensors")["image_tensor"]


def test_tiny_golden_outputs(tiny_backbone, tiny_image, golden_dir: Path) -> None:
    expected = load_file(golden_dir / "tiny" / "outputs_visual_backbone.safetensors")
    with torch.no_grad():
        stages, pyramid = tiny_backbone.forward_with_stages(tiny_image)
    got = {f"swin_stage{i + 2}": t for i, t in enumerate(stages)}
    got |= {f"fpn_p{i + 3}": t for i, t in enumerate(pyramid)}
    assert len(stages) == 4 and len(pyramid) == 5
    diffs = {}
    for name, tensor in got.items():
        assert tensor.shape == expected[name].shape, name
        diffs[name] = (tensor - expected[name]).abs().max().item()
    print("max |diff| vs golden:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) < 1e-4, diffs


def test_shift_mask_matters_on_golden(tiny_backbone, tiny_image, golden_dir, monkeypatch) -> None:
    expected = load_file(golden_dir / "tiny" / "outputs_visual_backbone.safetensors")
    real = SwinStage.shift_mask
    monkeypatch.setattr(
        SwinStage, "shift_mask", lambda self, h, w, d: torch.zeros_like(real(self, h, w, d))
    )
    with torch.no_grad():
        stages = tiny_backbone.swin(tiny_image)
    # Every stage has a shifted block, so every stage must move away from the reference.
    for i, stage in enumerate(stages):
        assert (stage - expected[f"swin_stage{i + 2}"]).abs().max() > 0.1


@pytest.mark.parametrize("size,window", [((14, 21), 7), ((24, 12), 12), ((7, 7), 7)])
def test_shifted_window_mask_matches_wraparound(size, window) -> None:
    # Two tokens of a window of the rolled map may attend to each other iff neither or both of
    # them wrapped around, per axis.
    h, w = size
    shift = window // 2
    mask = shifted_window_mask(h, w, window, shift)
    n_win_w = w // window
    assert mask.shape == (h // window * n_win_w, window * window, window * window)
    for win in range(mask.shape[0]):
        rows = (win // n_win_w) * window + torch.arange(window).repeat_interleave(window)
        cols = (win % n_win_w) * window + torch.arange(window).repeat(window)
        wrap_r, wrap_c = rows + shift >= h, cols + shift >= w
        same = (wrap_r[:, None] == wrap_r[None, :]) & (wrap_c[:, None] == wrap_c[None, :])
        assert torch.equal(mask[win] == 0, same)
        assert torch.all(mask[win][~same] == -100.0)
    if h > window and w > window:
        assert torch.all(mask[0] == 0)  # the top-left window never wraps


def test_odd_input_size() -> None:
    torch.manual_seed(0)
    model = VisualBackbone(TINY_SWIN, TINY_FPN).eval()
    with torch.no_grad():
        stages, pyramid = model.forward_with_stages(torch.randn(1, 3, 131, 197))
    h, w = 33, 50  # ceil(131 / 4), ceil(197 / 4)
    for i, stage in enumerate(stages):
        assert stage.shape == (1, TINY_SWIN.stage_channels[i], h, w)
        if i >= 1:
            assert pyramid[i - 1].shape == (1, 64, h, w)
        h, w = (h + 1) // 2, (w + 1) // 2
    assert len(pyramid) == 5
    assert pyramid[3].shape == (1, 64, 3, 4) and pyramid[4].shape == (1, 64, 2, 2)
    assert all(torch.isfinite(t).all() for t in stages + pyramid)


def test_batch_items_are_independent() -> None:
    torch.manual_seed(0)
    model = SwinTransformer(TINY_SWIN).eval()
    images = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        both = model(images)
        second = model(images[1:])
    for b, s in zip(both, second):
        torch.testing.assert_close(b[1:], s, atol=1e-5, rtol=0)


def test_drop_block_identity_in_eval_and_drops_in_train() -> None:
    torch.manual_seed(0)
    block = DropBlock2D(drop_prob=0.3, block_size=3)
    x = torch.ones(4, 8, 32, 32)
    assert torch.equal(block.eval()(x), x)
    y = block.train()(x)
    zeros = y == 0
    assert zeros.any() and not zeros.all()
    assert torch.equal(zeros, zeros[:, :1].expand_as(zeros))  # blocks are shared over channels
    kept = y[~zeros]
    assert torch.allclose(kept, kept[0].expand_as(kept)) and kept[0] > 1  # rescaled
    assert abs(y.mean().item() - 1.0) < 1e-5  # numel / kept keeps the mean exactly


def test_fpn_drop_block_only_in_training() -> None:
    torch.manual_seed(0)
    fpn = FPN((16, 32, 64), 8, drop_block_prob=0.3, drop_block_size=3)
    feats = [torch.randn(1, c, s, s) for c, s in ((16, 16), (32, 8), (64, 4))]
    with torch.no_grad():
        a, b = fpn.eval()(feats), fpn(feats)
        trained = fpn.train()(feats)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(trained[0], a[0])
    # The top-most level (and P6/P7 computed from it) never sees DropBlock.
    for i in (2, 3, 4):
        assert torch.equal(trained[i], a[i])


def test_drop_path_and_checkpoint_in_training() -> None:
    torch.manual_seed(0)
    cfg = SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), drop_path_rate=0.5)
    model = SwinTransformer(cfg, use_checkpoint=True)
    images = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(images)[-1], model(images)[-1])
        model.train()
        assert not torch.equal(model(images)[-1], model(images)[-1])
    loss = sum(t.square().mean() for t in model(images))
    loss.backward()
    tables = [b.attn.relative_position_bias_table for layer in model.layers for b in layer.blocks]
    assert all(t.grad is not None for t in tables)
    assert tables[0].grad.abs().sum() > 0  # the first block has drop-path rate 0


@pytest.mark.parametrize(
    "keys_file,swin_cfg", [("glip_t_keys.json", SwinConfig()), ("glip_l_keys.json", GLIP_L_SWIN)]
)
def test_state_dict_matches_official_keys(golden_dir: Path, keys_file: str, swin_cfg) -> None:
    expected = _official_shapes(golden_dir / keys_file)
    with torch.device("meta"):
        model = VisualBackbone(swin_cfg, FPNConfig())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
