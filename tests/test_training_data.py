"""Training data: COCO/Roboflow reading and cleaning (every oddity of the shared real datasets and
the synthetic ones they lack), few-shot sampling, training transforms, captions, batch plans."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glipcli.config import InputConfig
from glipcli.data.coco import coco_ground_truth, load_coco
from glipcli.data.dataset_source import resolve_splits
from glipcli.data.splits import roboflow_splits
from glipcli.data.epoch_batches import EpochBatches
from glipcli.data.fewshot import default_patience, default_schedule, few_shot_indices
from glipcli.data.train_dataset import TrainCollate, TrainDataset
from glipcli.data.train_transforms import TrainTransform, train_min_sizes
from glipcli.data.training_prompt import build_training_prompt
from glipcli.data.transforms import load_image
from glipcli.errors import GlipError
from glipcli.prompts.prompt_file import PromptSpec
from training_utils import COLORS, shapes_dataset, write_split


def _real(shared_dir: Path, name: str) -> dict:
    return roboflow_splits(shared_dir / "data" / "real" / name)


def _load_real(shared_dir: Path, name: str, split: str = "train"):
    splits = _real(shared_dir, name)
    train = load_coco(splits["train"].ann, splits["train"].images, "train")
    if split == "train":
        return train
    return load_coco(splits[split].ann, splits[split].images, split, reference=train)


# -- the shared real datasets (SOURCES.md oddities) ---------------------------------------------------
def test_rbc_roboflow_placeholder_ids_from_zero_and_float_boxes(shared_dir):
    train = _load_real(shared_dir, "rbc_roboflow")
    raw = json.loads((shared_dir / "data/real/rbc_roboflow/train/_annotations.coco.json").read_text())
    assert min(c["id"] for c in raw["categories"]) == 0 and min(i["id"] for i in raw["images"]) == 0
    # placeholder category 0 "RBC-WBC" is not a class; the real ones keep their ids
    assert train.classes == ["rbc", "wbc"] and train.category_ids == [1, 2]
    assert train.stats.placeholder_categories == ["RBC-WBC"]
    assert train.stats.images == 210 and train.stats.boxes == 4947 and train.stats.degenerate == 0
    # image id 0 is an image like any other
    first = next(r for r in train.images if r.image_id == 0)
    raw_boxes = [a["bbox"] for a in raw["annotations"] if a["image_id"] == 0]
    assert first.num_boxes == len(raw_boxes)
    # float boxes are kept as floats (x2 = x + w - 1, the official inclusive convention)
    assert any(not float(v).is_integer() for b in raw_boxes for v in b)
    x, y, w, h = raw_boxes[0]
    np.testing.assert_allclose(first.boxes[0], [x, y, x + w - 1, y + h - 1], rtol=0, atol=1e-4)
    for split in ("valid", "test"):
        data = _load_real(shared_dir, "rbc_roboflow", split)
        assert data.classes == ["rbc", "wbc"] and data.stats.placeholder_categories == ["RBC-WBC"]
    # the rare class (about 4% of the boxes) is in every 1-shot subset
    labels = [r.labels for r in train.images]
    for seed in (3, 30, 300):
        chosen = few_shot_indices(labels, 1, seed)
        assert any((labels[i] == 1).any() for i in chosen) and any((labels[i] == 0).any() for i in chosen)


def test_raccoon_grayscale_images_become_three_channels(shared_dir):
    train = _load_real(shared_dir, "raccoon")
    record = next(r for r in train.images if r.file_name.startswith("raccoon-152_jpg"))
    with Image.open(record.path) as raw:
        assert raw.mode == "L"
    transform = TrainTransform.official(InputConfig(min_size=128, max_size=160))
    tensor, boxes, (h, w) = transform(load_image(record.path), torch.from_numpy(record.boxes), random.Random(0))
    assert tensor.shape == (3, h, w) and boxes.shape == (record.num_boxes, 4)
    # widely varying sizes (up to 2000 px wide) all respect the long-side cap
    widest = max(train.images, key=lambda r: r.width)
    assert widest.width == 2000
    tensor, _, (h, w) = transform(load_image(widest.path), torch.from_numpy(widest.boxes), random.Random(0))
    assert max(h, w) <= 160


def test_chess_duplicate_boxes_are_kept(shared_dir):
    train = _load_real(shared_dir, "chess_pieces")
    assert train.stats.boxes == 2108 and train.stats.degenerate == 0
    record = next(r for r in train.images if r.file_name.startswith("26d663ab"))
    rook = train.classes.index("white-rook")
    target = np.array([68, 10, 68 + 29 - 1, 10 + 53 - 1], dtype=np.float32)
    same = [(b == target).all() and lab == rook for b, lab in zip(record.boxes, record.labels)]
    assert sum(same) == 2
    # the many small boxes are all kept (651 of 2108 under 32x32)
    areas = np.concatenate([(r.boxes[:, 2] - r.boxes[:, 0] + 1) * (r.boxes[:, 3] - r.boxes[:, 1] + 1)
                            for r in train.images])
    assert int((areas < 32 * 32).sum()) == 651
    # hyphenated names stay verbatim in the caption, each grounded to its own tokens
    prompt = build_training_prompt(train.classes, 256)
    assert prompt.caption.startswith("white-king. white-queen. ")
    spans = [prompt.class_maps[c].nonzero().flatten().tolist() for c in range(12)]
    assert all(spans) and len({tuple(t) for t in spans}) == 12


def test_pothole_zero_width_box_dropped_and_difficult_key_ignored(shared_dir):
    train = _load_real(shared_dir, "pothole")
    assert train.stats.degenerate == 1 and train.stats.boxes == 1441 - 1
    record = next(r for r in train.images if r.file_name == "img-415.jpg")
    raw = json.loads((shared_dir / "data/real/pothole/train/_annotations.coco.json").read_text())
    image_id = next(i["id"] for i in raw["images"] if i["file_name"] == "img-415.jpg")
    assert record.num_boxes == sum(a["image_id"] == image_id for a in raw["annotations"]) - 1
    assert not any((b == [273, 164, 273, 164]).all() for b in record.boxes)
    assert sum("difficult" in a for a in raw["annotations"]) == 2  # read like any other box
    assert "dropped 1 zero-area/degenerate box" in train.stats.summary("train")


def test_bccd_zero_area_boxes_dropped_in_train_and_valid(shared_dir):
    train = _load_real(shared_dir, "bccd")
    valid = _load_real(shared_dir, "bccd", "valid")
    assert train.classes == ["RBC", "WBC", "Platelets"]
    assert build_training_prompt(train.classes, 256).caption == "RBC. WBC. Platelets"
    # dense scenes (up to 30 heavily overlapping boxes): every non-degenerate box is kept
    for data in (train, valid):
        raw = json.loads(data.ann_path.read_text())
        per_image = {}
        for a in raw["annotations"]:
            if a["bbox"][2] > 0 and a["bbox"][3] > 0:
                per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        assert {r.image_id: r.num_boxes for r in data.images if r.num_boxes} == per_image
    assert max(r.num_boxes for r in train.images + valid.images) == 30
    assert (train.stats.degenerate, train.stats.boxes) == (1, 2804)
    assert (valid.stats.degenerate, valid.stats.boxes) == (1, 1137)
    # the evaluation ground truth holds the same cleaned boxes
    gt = coco_ground_truth(valid)
    assert len(gt["annotations"]) == 1137 and all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in gt["annotations"])


# -- synthetic oddities the shared data lacks ---------------------------------------------------------
def test_boxes_outside_image_are_clipped_and_counted(tmp_path):
    ann = write_split(tmp_path, [{"name": "a.png", "size": (100, 80), "boxes": [
        ("red", [-10, 5, 30, 20]),      # left edge outside
        ("red", [90, 70, 20, 20]),      # right-bottom outside
        ("red", [120, 10, 10, 10]),     # wholly outside: nothing left
        ("red", [10, 10, 20, 20]),      # inside
    ]}], ["red"])
    data = load_coco(ann)
    # the wholly outside box is dropped (degenerate after clipping), not counted as clipped
    assert data.stats.clipped == 2 and data.stats.degenerate == 1 and data.stats.boxes == 3
    np.testing.assert_array_equal(data.images[0].boxes, [[0, 5, 19, 24], [90, 70, 99, 79], [10, 10, 29, 29]])


def test_non_contiguous_category_ids_and_unused_real_class(tmp_path):
    ann = write_split(tmp_path, [{"name": "a.png", "size": (64, 64), "boxes": [("blue", [4, 4, 20, 20])]}],
                      ["red", "blue"], first_category_id=7)
    raw = json.loads(ann.read_text())
    raw["categories"][1]["id"] = 42  # blue: 7 -> 42
    raw["annotations"][0]["category_id"] = 42
    ann.write_text(json.dumps(raw))
    data = load_coco(ann)
    # "red" is used by no box but is no placeholder: it stays a class (a negative in the caption)
    assert data.classes == ["red", "blue"] and data.category_ids == [7, 42]
    assert data.images[0].labels.tolist() == [1]


def test_grayscale_rgba_and_palette_images(tmp_path):
    ann = write_split(tmp_path, [
        {"name": "l.png", "size": (64, 48), "mode": "L", "boxes": [("red", [4, 4, 20, 20])]},
        {"name": "rgba.png", "size": (64, 48), "mode": "RGBA", "boxes": [("red", [4, 4, 20, 20])]},
        {"name": "p.png", "size": (64, 48), "mode": "P", "boxes": [("red", [4, 4, 20, 20])]},
    ], ["red"])
    data = load_coco(ann)
    transform = TrainTransform.official(InputConfig(min_size=64, max_size=96))
    for record in data.images:
        tensor, _, (h, w) = transform(load_image(record.path), torch.from_numpy(record.boxes), random.Random(1))
        assert tensor.shape == (3, h, w)


def test_exif_rotated_image_boxes_are_in_the_displayed_frame(tmp_path):
    # Stored 80x40 landscape with EXIF orientation 6 (rotate 90 clockwise to display): shown 40x80.
    stored = Image.new("RGB", (80, 40), (128, 128, 128))
    stored.paste(COLORS["red"], (50, 5, 70, 15))  # stored pixels x 50..69, y 5..14
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "rot.jpg").write_bytes(b"")
    stored.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    shown = load_image(tmp_path / "rot.jpg")
    assert shown.size == (40, 80)
    arr = np.asarray(shown).astype(int)
    ys, xs = np.nonzero((arr[..., 0] > 180) & (arr[..., 1] < 90))
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
    # the annotation is written in the displayed frame (as Roboflow exports it)
    box = [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]
    meta = {"images": [{"id": 1, "file_name": "rot.jpg", "width": 40, "height": 80}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": box[2] * box[3]}],
            "categories": [{"id": 1, "name": "red"}]}
    (tmp_path / "ann.json").write_text(json.dumps(meta))
    data = load_coco(tmp_path / "ann.json", tmp_path)
    record = data.images[0]
    assert (record.width, record.height) == (40, 80) and data.stats.size_mismatch == 0
    # the training sample crops the red block at its box (no flip: scale only)
    transform = TrainTransform(InputConfig(min_size=80, max_size=200), (80,), 200, flip_prob=0.0)
    tensor, boxes, _ = transform(shown, torch.from_numpy(record.boxes), random.Random(0))
    bx0, by0, bx1, by1 = boxes[0].round().int().tolist()
    red_channel = tensor[2]  # BGR
    inside = red_channel[by0 + 1:by1, bx0 + 1:bx1]
    assert inside.numel() > 0 and float(inside.min()) > 1.0  # strongly red everywhere inside
    # a JSON that gives the stored (unrotated) size is flagged
    meta["images"][0].update(width=80, height=40)
    (tmp_path / "ann2.json").write_text(json.dumps(meta))
    assert load_coco(tmp_path / "ann2.json", tmp_path).stats.size_mismatch == 1


def test_images_without_annotations_and_crowd(tmp_path):
    ann = write_split(tmp_path, [
        {"name": "a.png", "size": (64, 64), "boxes": [("red", [4, 4, 20, 20])]},
        {"name": "empty.png", "size": (64, 64), "boxes": []},
    ], ["red"], extra_annotations=[{"id": 99, "image_id": 1, "category_id": 1, "bbox": [30, 30, 20, 20],
                                    "area": 400, "iscrowd": 1}])
    data = load_coco(ann)
    assert data.stats.images == 2 and data.stats.images_without_boxes == 1 and data.stats.crowd == 1
    assert data.annotated_indices() == [0]
    assert few_shot_indices([r.labels for r in data.images], 0, 0) == [0]  # not a training image
    gt = coco_ground_truth(data)
    assert len(gt["images"]) == 2  # still evaluated (false positives count)
    assert sorted(a["iscrowd"] for a in gt["annotations"]) == [0, 1]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "annotations"}), "no 'annotations' list"),
    (lambda d: json.dumps({**d, "categories": []}), "no categories"),
    (lambda d: json.dumps({**d, "annotations": [{**d["annotations"][0], "category_id": 77}]}),
     "unknown category id 77"),
    (lambda d: json.dumps({**d, "annotations": [{**d["annotations"][0], "image_id": 5}]}), "unknown image id 5"),
    (lambda d: json.dumps({**d, "annotations": [{k: v for k, v in d["annotations"][0].items() if k != "bbox"}]}),
     "has no 'bbox'"),
    (lambda d: json.dumps({**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2, "x", 4]}]}), "4 finite numbers"),
    (lambda d: json.dumps({**d, "images": [{"id": 1}]}), "has no 'file_name'"),
    (lambda d: json.dumps({**d, "images": [{**d["images"][0], "file_name": "gone.png"}]}), "missing from"),
    (lambda d: json.dumps([1, 2]), "top level is not an object"),
])
def test_malformed_annotation_files_are_one_line_errors(tmp_path, mutate, message):
    ann = write_split(tmp_path, [{"name": "a.png", "size": (64, 64), "boxes": [("red", [4, 4, 20, 20])]}], ["red"])
    ann.write_text(mutate(json.loads(ann.read_text())))
    with pytest.raises(GlipError, match=message) as info:
        load_coco(ann)
    assert "\n" not in str(info.value)


def test_split_categories_must_agree_with_train(tmp_path):
    shapes_dataset(tmp_path)
    raw = json.loads((tmp_path / "valid/_annotations.coco.json").read_text())
    raw["categories"][0]["name"] = "crimson"
    (tmp_path / "valid/_annotations.coco.json").write_text(json.dumps(raw))
    splits = roboflow_splits(tmp_path)
    train = load_coco(splits["train"].ann)
    with pytest.raises(GlipError, match="'crimson' here but 'red' in the training split"):
        load_coco(splits["valid"].ann, split="valid", reference=train)


def test_resolve_splits_layouts(tmp_path):
    shapes_dataset(tmp_path / "ds", test=True)
    splits = resolve_splits(tmp_path / "ds")
    assert set(splits) == {"train", "valid", "test"}
    explicit = resolve_splits(train_ann=tmp_path / "ds/train/_annotations.coco.json",
                              val_ann=tmp_path / "ds/valid/_annotations.coco.json",
                              val_images=tmp_path / "ds/valid")
    assert set(explicit) == {"train", "valid"} and explicit["train"].images == tmp_path / "ds/train"
    with pytest.raises(GlipError, match="no train/_annotations.coco.json"):
        resolve_splits(tmp_path / "ds/valid")
    with pytest.raises(GlipError, match="no training data"):
        resolve_splits()


# -- few-shot sampling ----------------------------------------------------------------------------------
def _random_labels(num_images: int, num_classes: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_images):
        n = int(rng.integers(0, 6))
        # skewed class frequencies: class 0 common, the last class rare
        weights = np.linspace(2, 0.2, num_classes)
        out.append(rng.choice(num_classes, size=n, p=weights / weights.sum()))
    return out


@pytest.mark.parametrize("shots", [1, 3, 5, 10])
def test_few_shot_every_class_gets_k_instances(shots):
    labels = _random_labels(300, 6, seed=shots)
    totals = np.bincount(np.concatenate(labels), minlength=6)
    for seed in (3, 30, 300):
        chosen = few_shot_indices(labels, shots, seed)
        counts = np.bincount(np.concatenate([labels[i] for i in chosen]), minlength=6)
        images_with = [sum(c in labels[i] for i in chosen) for c in range(6)]
        for c in range(6):
            assert counts[c] >= min(shots, totals[c])
            # image-level quota: at least K images show the class (unless fewer exist)
            assert images_with[c] >= min(shots, sum(c in lab for lab in labels))
        assert all(len(labels[i]) > 0 for i in chosen)
        assert chosen == sorted(set(chosen))


def test_few_shot_seeds():
    labels = _random_labels(300, 6, seed=0)
    a, b, c = (few_shot_indices(labels, 3, s) for s in (3, 3, 30))
    assert a == b
    assert a != c
    assert len({tuple(few_shot_indices(labels, 3, s)) for s in range(10)}) > 5
    assert few_shot_indices(labels, 0, 3) == [i for i, lab in enumerate(labels) if len(lab)]


def test_few_shot_image_level_quota_rule():
    # The official walk: keep an image if a class it shows still needs images.
    labels = [np.array([0, 0, 0]), np.array([0]), np.array([1]), np.array([0, 1])]
    for seed in range(20):
        order = list(range(4))
        random.Random(seed).shuffle(order)
        quota, expected = {0: 1, 1: 1}, []
        for i in order:
            shown = set(labels[i].tolist())
            if any(quota[c] > 0 for c in shown):
                expected.append(i)
                for c in shown:
                    quota[c] -= 1
        assert few_shot_indices(labels, 1, seed) == sorted(expected)


def test_official_schedule_defaults():
    assert [default_schedule(k) for k in (1, 3, 5, 10, 0)] == [(200, 8), (200, 4), (200, 2), (200, 1), (200, 1)]
    assert default_patience(1) == (3, 8) and default_patience(0) == (2, 4)
    with pytest.raises(GlipError):
        few_shot_indices([np.array([0])], -1, 0)


# -- transforms, captions, batches ----------------------------------------------------------------------
def test_train_scales_follow_the_official_list():
    assert train_min_sizes(InputConfig()) == (480, 560, 640, 720, 800)
    assert train_min_sizes(InputConfig(min_size=128, max_size=160)) == (77, 90, 102, 115, 128)
    assert TrainTransform.official(InputConfig(min_size=128, max_size=160)).max_size == 160


def test_train_transform_resizes_and_flips_boxes_with_the_pixels():
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    image.paste(COLORS["blue"], (20, 30, 60, 70))  # x 20..59, y 30..69
    boxes = torch.tensor([[20.0, 30.0, 59.0, 69.0]])
    transform = TrainTransform.official(InputConfig(min_size=100, max_size=400))
    seen = set()
    for seed in range(40):
        rng = random.Random(seed)
        min_size = random.Random(seed).choice(transform.min_sizes)
        tensor, out, (h, w) = transform(image, boxes, rng)
        assert h == min_size and w == 2 * min_size
        flipped = bool(out[0, 0] > w / 2)
        seen.add(flipped)
        x0, y0, x1, y1 = out[0].tolist()
        assert x1 - x0 == pytest.approx(39 * w / 200, abs=1e-4)
        if flipped:  # x1' = W - x2 - 1 (maskrcnn_benchmark BoxList.transpose)
            assert x0 == pytest.approx(w - 59 * w / 200 - 1, abs=1e-4)
        blue = tensor[0]  # BGR: B channel
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        assert float(blue[cy, cx]) > 1.0 and float(blue[cy, min(w - 1, int(x1) + 6)]) < 1.0
    assert seen == {True, False}


def test_training_prompt_caption_and_token_maps():
    prompt = build_training_prompt(["white-king", "small_fish (x)", "rbc"], 256)
    assert prompt.caption == "white-king. small fish . rbc"  # official clean_name
    maps = prompt.class_maps
    assert prompt.length == prompt.encoded.num_tokens
    for label, phrase in enumerate(prompt.spec.caption().classes):
        tokens = prompt.encoded.token_spans[label]
        assert maps[label].nonzero().flatten().tolist() == tokens
    pm = prompt.positive_map(torch.tensor([2, 0, 2]))
    assert pm.shape == (3, prompt.length) and torch.equal(pm[0], pm[2])


def test_training_prompt_from_prompt_file_matches_by_name():
    spec = PromptSpec.from_yaml_text("classes:\n  - name: wbc\n    text: white blood cell\n  - rbc\n"
                                     "suppress:\n  - platelet\n")
    prompt = build_training_prompt(["rbc", "wbc"], 256, spec)
    assert prompt.caption == "white blood cell. rbc. platelet"
    assert prompt.phrase_labels == [1, 0]
    wbc_tokens = prompt.class_maps[1].nonzero().flatten().tolist()
    assert wbc_tokens == prompt.encoded.token_spans[0] and len(wbc_tokens) == 3
    with pytest.raises(GlipError, match="no class for the dataset category 'wbc'"):
        build_training_prompt(["rbc", "wbc"], 256, PromptSpec.from_yaml_text("classes: [rbc]"))
    with pytest.raises(GlipError, match="'cat' is not a category"):
        build_training_prompt(["rbc"], 256, PromptSpec.from_yaml_text("classes: [rbc, cat]"))


def test_epoch_batches_are_seeded_resumable_and_cover_every_copy():
    plan = EpochBatches.of(range(5), copies=3, batch_size=2, seed=7)
    assert len(plan) == 8
    first = plan.batches(0)
    assert first == plan.batches(0) and first != plan.batches(1)
    assert plan.batches(0, start=5) == first[5:]
    items = [index for batch in first for (_, _, index) in batch]
    assert sorted(items) == sorted(list(range(5)) * 3)
    assert first[-1] and len(first[-1]) == 1  # a single process keeps the short last batch
    # two processes: equal steps, disjoint slices of the same global order
    ranks = [EpochBatches.of(range(5), 3, 2, 7, num_replicas=2, rank=r) for r in (0, 1)]
    b0, b1 = ranks[0].batches(0), ranks[1].batches(0)
    assert len(b0) == len(b1) == 4 and all(len(b) == 2 for b in b0 + b1)
    positions = [p for batch in b0 + b1 for (_, p, _) in batch]
    assert set(range(15)) <= set(positions)


def test_train_dataset_samples_are_a_function_of_the_key(tmp_path):
    shapes_dataset(tmp_path, train_images=3, val=False)
    data = load_coco(tmp_path / "train/_annotations.coco.json")
    cfg = InputConfig(min_size=64, max_size=96)
    dataset = TrainDataset(data, TrainTransform.official(cfg), seed=5)
    a, b = dataset[(2, 4, 1)], dataset[(2, 4, 1)]
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)
    shapes = {dataset[(e, p, 1)].image.shape for e in range(3) for p in range(6)}
    assert len(shapes) > 1  # scales vary with the key
    prompt = build_training_prompt(data.classes, 256)
    batch = TrainCollate(prompt, 32)([a, dataset[(0, 0, 0)]])
    assert batch.images.shape[0] == 2 and batch.images.shape[-1] % 32 == 0
    for target, labels in zip(batch.targets, batch.labels):
        assert target.positive_map.shape == (len(labels), prompt.length)
        assert torch.equal(target.positive_map, prompt.class_maps[labels][:, :prompt.length])
