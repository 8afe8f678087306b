"""The procedural grounding world: determinism, boxes vs pixels, captions, held-out splits, the
dataset on disk (pycocotools and our COCO reader) and `glip synth-data`."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from glipcli.nano.synthetic import (CLASSIC_SHAPES, COLOURS, EXTRA_SHAPES, SHAPES, WORLD_EDITIONS, CategoryScheme,
                                    HeldOut, ObjectSpec, SyntheticWorld, WorldConfig, spatial_relation,
                                    write_coco_dataset)
from glipcli.nano.synthetic.render import shape_coverage
from glipcli.nano.synthetic.vocabulary import (COUNT_WORDS, PATTERNS, SIZES, category_text, parse_combo,
                                               synonym_words)
from glipcli.errors import GlipError

SMALL = WorldConfig(size_range=(96, 128), objects_range=(2, 5))


def _world(seed: int = 0, **changes) -> SyntheticWorld:
    return SyntheticWorld(seed, config=dataclasses.replace(SMALL, **changes))


# -- determinism ------------------------------------------------------------------------------------
def test_scenes_and_captions_are_deterministic_by_seed_and_index():
    a, b = _world(7), _world(7)
    later = [a.scene(i) for i in range(4)][-1]
    fresh = b.scene(3)  # made without scenes 0-2 first: random access
    assert np.array_equal(later.image, fresh.image)
    assert later.objects == fresh.objects
    assert [c.text for c in a.captions(later, 3)] == [c.text for c in b.captions(fresh, 3)]
    other_seed = _world(8).scene(3)
    other_stream = _world(7).scene(3, stream="valid")
    assert not np.array_equal(other_seed.image, fresh.image) or other_seed.objects != fresh.objects
    assert not np.array_equal(other_stream.image, fresh.image) or other_stream.objects != fresh.objects


# -- boxes and pixels -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_single_object_box_is_the_box_of_its_drawn_pixels(shape):
    world = _world(1, backgrounds=("solid",))
    scene = world.compose([ObjectSpec(shape, "red", x=0.45, y=0.55, rotation=7.0)], width=120, height=100,
                          background="solid")
    (obj,) = scene.objects
    # How far each pixel is from the background towards the object colour (0 = background,
    # 1 = object); the anti-aliased rim lies in between. Drawn pixels are those past half way.
    bg, fg = np.array(scene.background_rgb, float), np.array(obj.rgb, float)
    t = ((scene.image.astype(float) - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
    ys, xs = np.nonzero(t > 0.5)
    drawn = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert np.allclose(drawn, obj.box, atol=1.0), (drawn, obj.box)
    assert abs(int((t > 0.5).sum()) - obj.area) <= 0.05 * obj.area
    assert obj.box == obj.full_box and obj.area == obj.full_area
    assert 0.2 * obj.box[2] * obj.box[3] < obj.area <= obj.box[2] * obj.box[3]


def test_shapes_are_distinct_masks():
    masks = {}
    for shape in SHAPES:
        cov = shape_coverage(shape, 40.0, 40.0, 30.0, 0.0)
        canvas = np.zeros((80, 80), bool)
        canvas[cov.y0:cov.y0 + cov.alpha.shape[0], cov.x0:cov.x0 + cov.alpha.shape[1]] = cov.alpha >= 0.5
        masks[shape] = canvas
    for i, s in enumerate(SHAPES):
        for t in SHAPES[i + 1:]:
            iou = (masks[s] & masks[t]).sum() / (masks[s] | masks[t]).sum()
            assert iou < 0.85, (s, t, iou)


def test_boxes_lie_inside_images_and_cover_the_object_colours():
    world = _world(2, backgrounds=("solid",), pattern_probability=0.0, clutter=0.0)
    occluded = 0
    for i in range(25):
        scene = world.scene(i)
        assert scene.image.shape == (scene.height, scene.width, 3)
        assert 96 <= scene.width <= 128 and 96 <= scene.height <= 128
        diff = np.abs(scene.image.astype(int) - np.array(scene.background_rgb)).max(-1)
        inside_some_box = np.zeros(diff.shape, bool)
        for k, obj in enumerate(scene.objects):
            x, y, w, h = obj.box
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= scene.width and y + h <= scene.height
            fx, fy, fw, fh = obj.full_box  # the visible box lies within the whole-shape box
            assert fx <= x and fy <= y and x + w <= fx + fw and y + h <= fy + fh
            assert obj.visible_fraction >= world.config.min_visible - 1e-9
            occluded += obj.visible_fraction < 1.0
            # The pixels the object owns are painted in (about) its palette colour.
            pixels = scene.image[scene.owner == k].astype(float)
            assert pixels.shape[0] == obj.area
            assert np.abs(np.median(pixels, axis=0) - np.array(COLOURS[obj.colour])).max() < 30
            inside_some_box[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1] = True
        assert not (diff > 60)[~inside_some_box].any(), "object pixels outside every box"
    assert occluded > 0, "no scene had an occluded object"


# -- captions ---------------------------------------------------------------------------------------
def _check_phrase(phrase, scene):
    words = phrase.text.split()
    count = 1
    if words[0] in COUNT_WORDS:
        count = COUNT_WORDS.index(words[0])
    else:
        assert words[0] in ("a", "an", "the")
    assert len(phrase.objects) == count
    noun = words[-1]
    shape = noun if count == 1 else {"crosses": "cross"}.get(noun, noun.removesuffix("s"))
    for index in phrase.objects:
        obj = scene.objects[index]
        assert obj.shape == shape
        for word in words[1:-1]:
            if word in COLOURS:
                assert obj.colour == word
            elif word in SIZES:
                assert obj.size == word
            elif word in PATTERNS:
                assert obj.pattern == word
            else:
                raise AssertionError(f"unexpected word {word!r} in {phrase.text!r}")
    # Every matching object is grounded: no other object fits the description.
    attrs = set(words[1:-1])
    for k, obj in enumerate(scene.objects):
        fits = obj.shape == shape and all(a in (obj.colour, obj.size, obj.pattern) for a in attrs)
        assert fits == (k in phrase.objects), (phrase.text, k)


def test_caption_spans_map_to_their_text_and_boxes():
    world = _world(3)
    relations = plurals = 0
    for i in range(30):
        scene = world.scene(i)
        for caption in world.captions(scene, 3):
            assert caption.phrases
            ends = [0]
            for phrase in caption.phrases:
                assert caption.text[phrase.start:phrase.end] == phrase.text
                assert phrase.start >= ends[-1]  # in order, not overlapping
                ends.append(phrase.end)
                _check_phrase(phrase, scene)
                plurals += len(phrase.objects) > 1
            groups = [set(p.objects) for p in caption.phrases]
            assert sum(len(g) for g in groups) == len(set().union(*groups)), "phrases share an object"
            if caption.relation is not None:
                relations += 1
                a, b = caption.phrases[0], caption.phrases[1]
                assert len(a.objects) == len(b.objects) == 1
                assert f"{a.text} {caption.relation} {b.text}" in caption.text
                box_a, box_b = scene.objects[a.objects[0]].box, scene.objects[b.objects[0]].box
                ca = (box_a[0] + box_a[2] / 2, box_a[1] + box_a[3] / 2)
                cb = (box_b[0] + box_b[2] / 2, box_b[1] + box_b[3] / 2)
                expected = {"to the left of": ca[0] < cb[0], "to the right of": ca[0] > cb[0],
                            "above": ca[1] < cb[1], "below": ca[1] > cb[1]}[caption.relation]
                assert expected, (caption.text, box_a, box_b)
    assert relations > 5 and plurals > 0


def test_spatial_relation_needs_a_clear_direction():
    assert spatial_relation((0, 0, 10, 10), (40, 2, 10, 10)) == "to the left of"
    assert spatial_relation((40, 2, 10, 10), (0, 0, 10, 10)) == "to the right of"
    assert spatial_relation((0, 0, 10, 10), (3, 40, 10, 10)) == "above"
    assert spatial_relation((0, 0, 10, 10), (20, 20, 10, 10)) is None  # diagonal
    assert spatial_relation((0, 0, 40, 40), (5, 0, 40, 40)) is None  # barely apart


def test_other_wordings_use_held_out_words():
    world = _world(4)
    scene = world.scene(0)
    plain = synonym_words()
    assert "crimson" in plain and "disc" in plain and "points" in plain
    assert category_text("red circle", "synonym") == "crimson disc"
    assert category_text("star", "descriptive") == "shape with five points"
    for wording in ("synonym", "descriptive"):
        for caption in world.captions(scene, 2, wording=wording):
            for phrase in caption.phrases:
                assert caption.text[phrase.start:phrase.end] == phrase.text
                assert set(re.findall(r"[a-z]+", phrase.text)) & plain


# -- held-out definitions ---------------------------------------------------------------------------
def test_pretraining_never_shows_held_out_combos_shape_or_wording():
    world = _world(5)
    held = world.held_out
    assert ("purple", "star") in held.combos and held.shape == "arrow"
    banned = synonym_words()
    seen = set()
    for stream in ("train", "valid"):
        for i in range(60):
            scene = world.scene(i, "pretrain", stream=stream)
            for obj in scene.objects:
                assert (obj.colour, obj.shape) not in held.combos
                assert obj.shape != held.shape
                seen.add((obj.colour, obj.shape))
            for caption in world.captions(scene, 2):
                words = set(re.findall(r"[a-z]+", caption.text))
                assert not words & banned, caption.text
                assert not words & {"arrow", "arrows"}, caption.text
    # The held-out colours and shapes are still seen, with other partners, and so is every
    # shape family of the second edition.
    assert {"purple", "orange", "green"} <= {c for c, _ in seen}
    assert {"star", "circle", "triangle"} <= {s for _, s in seen}
    assert set(EXTRA_SHAPES) <= {s for _, s in seen}


def test_the_held_out_shape_is_kept_out_by_the_rules_not_by_chance():
    for edition, config in WORLD_EDITIONS.items():
        world = SyntheticWorld(0, config=config)
        rules = world.rules("pretrain")
        assert "arrow" not in rules.shapes and all(s != "arrow" for _, s in rules.combos()), edition
        assert not set(rules.combos()) & world.held_out.combos, edition
    assert set(WORLD_EDITIONS[2].pretrain_shapes) == set(SHAPES)
    assert WORLD_EDITIONS[1].pretrain_shapes == CLASSIC_SHAPES and WORLD_EDITIONS[1].clutter == 0.0
    # Whatever the edition, the evaluation tasks draw the classic shapes only.
    for task in ("unseen-combos", "novel-shape"):
        assert set(SyntheticWorld(0).rules(task).shapes) <= set(CLASSIC_SHAPES)


def test_first_edition_evaluation_scenes_are_unchanged():
    """The held-out data `glip bench synthetic` generates (first edition, seed 1) is what it was
    when the first nano was measured: the objects and boxes below were made by that code."""
    world = SyntheticWorld(1, config=WORLD_EDITIONS[1])
    unseen = world.scene(0, "unseen-combos", stream="test")
    assert [(o.colour, o.shape, o.box) for o in unseen.objects] == [
        ("red", "hexagon", (18, 23, 63, 69)), ("orange", "ring", (15, 146, 71, 70)),
        ("pink", "hexagon", (142, 156, 28, 31)), ("purple", "diamond", (154, 43, 38, 61)),
        ("black", "circle", (40, 84, 86, 86)), ("orange", "triangle", (71, 154, 56, 56))]
    novel = world.scene(7, "novel-shape", stream="test")
    assert [(o.colour, o.shape, o.box) for o in novel.objects] == [
        ("red", "circle", (134, 21, 38, 38)), ("orange", "ring", (166, 135, 38, 38)),
        ("black", "arrow", (113, 136, 24, 38)), ("yellow", "diamond", (89, 73, 23, 36))]


@pytest.mark.parametrize("rotation, wide", [(0.0, True), (90.0, False)])
def test_elongated_shapes_have_the_drawn_aspect_ratio(rotation, wide):
    for shape, aspect in (("bar", 5.0), ("ellipse", 2.0)):
        alpha = shape_coverage(shape, 100.0, 100.0, 60.0, rotation, aspect=aspect).alpha >= 0.5
        ys, xs = np.nonzero(alpha)
        width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        ratio = width / height if wide else height / width
        assert abs(ratio - aspect) < 0.1 * aspect, (shape, rotation, ratio)


def test_scenes_draw_varied_aspect_ratios_for_elongated_shapes():
    world = _world(4, pretrain_shapes=("bar", "circle"))
    aspects = [o.aspect for i in range(30) for o in world.scene(i).objects if o.shape == "bar"]
    assert len(aspects) > 10 and min(aspects) >= 2.5 and max(aspects) <= 6.0
    assert max(aspects) - min(aspects) > 1.5
    assert all(o.aspect is None for i in range(10) for o in world.scene(i).objects if o.shape == "circle")


def test_clutter_is_painted_but_never_annotated():
    plain = _world(3, backgrounds=("solid",), pattern_probability=0.0, clutter=0.0)
    busy = _world(3, backgrounds=("solid",), pattern_probability=0.0, clutter=1.0)
    cluttered = 0
    for i in range(10):
        a, b = plain.scene(i), busy.scene(i)
        for scene in (a, b):
            off = np.abs(scene.image.astype(int) - np.array(scene.background_rgb)).max(-1) > 30
            near = np.pad(scene.owner >= 0, 2)  # objects and their anti-aliased rims
            near = np.any([np.roll(np.roll(near, dy, 0), dx, 1) for dy in range(-2, 3) for dx in range(-2, 3)],
                          axis=0)[2:-2, 2:-2]
            if scene is a:
                assert not off[~near].any()  # without clutter the background is plain
            else:
                cluttered += int(off[~near].sum() > 0)
        assert all(o.shape in SHAPES for o in b.objects)  # clutter adds no objects
    assert cluttered == 10


def test_world_config_reads_first_edition_records():
    old = dataclasses.asdict(WORLD_EDITIONS[1])
    del old["pretrain_shapes"], old["clutter"]  # a record written before the second edition
    assert WorldConfig.from_record(json.loads(json.dumps(old))) == WORLD_EDITIONS[1]
    assert WorldConfig.from_record(json.loads(json.dumps(dataclasses.asdict(WORLD_EDITIONS[2])))) == WORLD_EDITIONS[2]
    with pytest.raises(GlipError, match="damaged world settings"):
        WorldConfig.from_record({"size_range": 5})


def test_evaluation_tasks_focus_on_the_held_out_concepts():
    world = _world(6)
    for i in range(15):
        unseen = world.scene(i, "unseen-combos", stream="test")
        assert any((o.colour, o.shape) in world.held_out.combos for o in unseen.objects)
        assert all(o.shape != "arrow" for o in unseen.objects)
        novel = world.scene(i, "novel-shape", stream="test")
        assert any(o.shape == "arrow" for o in novel.objects)


def test_held_out_definitions_are_checked():
    assert parse_combo(" Purple  star ") == ("purple", "star")
    with pytest.raises(GlipError, match="unknown shape 'blob'"):
        parse_combo("red blob")
    with pytest.raises(GlipError, match="two words"):
        parse_combo("red")
    with pytest.raises(GlipError, match="uses the held-out shape"):
        HeldOut(combos=frozenset({("red", "arrow")}), shape="arrow")
    with pytest.raises(GlipError, match="would never be seen"):
        HeldOut(combos=frozenset((c, "star") for c in COLOURS), shape=None)


# -- the dataset on disk ----------------------------------------------------------------------------
def test_written_dataset_loads_with_pycocotools_and_our_reader(tmp_path):
    from pycocotools.coco import COCO

    from glipcli.data.coco import load_coco
    from glipcli.data.splits import roboflow_splits
    from glipcli.prompts.prompt_file import PromptSpec

    root = tmp_path / "shapes"
    report = write_coco_dataset(root, 6, 2, 2, seed=3, config=SMALL, image_format="png")
    assert [s.name for s in report.splits] == ["train", "valid", "test"]
    assert len(report.categories) == 12 * (len(SHAPES) - 1) - 6  # every seen colour-shape pair
    assert "purple star" not in report.categories and not any("arrow" in c for c in report.categories)

    coco = COCO(str(root / "train" / "_annotations.coco.json"))
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) == report.splits[0].boxes > 0
    world = SyntheticWorld(3, config=SMALL)
    for img in coco.loadImgs(coco.getImgIds()):
        scene = world.scene(img["id"] - 1, "pretrain", stream="train")
        assert (img["width"], img["height"]) == (scene.width, scene.height)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert [a["bbox"] for a in anns] == [list(o.box) for o in scene.objects]
        assert [coco.cats[a["category_id"]]["name"] for a in anns] == [f"{o.colour} {o.shape}" for o in scene.objects]

    grounding = COCO(str(root / "train" / "_grounding.coco.json"))
    assert len(grounding.getImgIds()) == report.splits[0].captions
    for entry in grounding.loadImgs(grounding.getImgIds()):
        for ann in grounding.loadAnns(grounding.getAnnIds(imgIds=entry["id"])):
            (start, end), = ann["tokens_positive"]
            assert entry["phrases"][ann["phrase_ids"]] == {"text": entry["caption"][start:end],
                                                           "start": start, "end": end}

    splits = roboflow_splits(root)
    train = load_coco(splits["train"].ann, split="train")
    valid = load_coco(splits["valid"].ann, split="valid", reference=train)
    assert train.classes == report.categories and valid.classes == train.classes
    assert sum(r.num_boxes for r in train.images) == report.splits[0].boxes
    for wording in ("plain", "synonym", "descriptive"):
        spec = PromptSpec.from_yaml(root / "prompts" / f"{wording}.yaml")
        assert spec.names == report.categories
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest["seed"] == 3 and manifest["held_out"]["shape"] == "arrow"


def test_filtered_categories_leave_distractors_unannotated(tmp_path):
    report = write_coco_dataset(tmp_path / "novel", 4, 0, 0, seed=1, task="novel-shape", config=SMALL)
    assert report.categories == ["arrow"] and [s.name for s in report.splits] == ["train"]
    data = json.loads((tmp_path / "novel" / "train" / "_annotations.coco.json").read_text())
    assert all(a["attributes"]["shape"] == "arrow" for a in data["annotations"]) and data["annotations"]
    report = write_coco_dataset(tmp_path / "shapes", 3, 0, 0, seed=1, config=SMALL,
                                categories=CategoryScheme("shape"))
    assert report.categories == [s for s in SHAPES if s != "arrow"]


def test_existing_folders_are_not_replaced_by_accident(tmp_path):
    root = tmp_path / "d"
    write_coco_dataset(root, 2, 0, 0, config=SMALL)
    with pytest.raises(GlipError, match="not empty"):
        write_coco_dataset(root, 2, 0, 0, config=SMALL)
    write_coco_dataset(root, 3, 0, 0, config=SMALL, overwrite=True)
    assert len(list((root / "train").glob("*.jpg"))) == 3
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(GlipError, match="refusing to replace it"):
        write_coco_dataset(other, 2, 0, 0, config=SMALL, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_synth_data_command(tmp_path, capsys):
    from glipcli.cli.main import main

    out = tmp_path / "cli"
    code = main(["synth-data", str(out), "--train", "3", "--valid", "1", "--test", "0", "--size", "96-112",
                 "--held-out", "pink heart", "--held-out-shape", "ring", "--seed", "4", "--quiet"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    manifest = json.loads((out / "synthetic.json").read_text())
    assert manifest["held_out"] == {"combos": ["pink heart"], "shape": "ring"}
    assert "pink heart" not in manifest["categories"]["names"]
    assert not (out / "test").exists()
    code = main(["synth-data", str(tmp_path / "bad"), "--held-out", "pink blob", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown shape 'blob'" in err and len(err.strip().splitlines()) == 1
