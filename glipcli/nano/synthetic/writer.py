"""Writing synthetic datasets to disk in the Roboflow/COCO layout, with grounding captions.

    OUT/
      synthetic.json                 how it was made: seed, task, held-out definitions, world config
      prompts/{plain,synonym,descriptive}.yaml   the categories as prompt files in each wording
      train/ valid/ test/            a split only when it has images
        000000.jpg ...
        _annotations.coco.json       COCO detection: categories, images, annotations (bbox xywh)
        _grounding.coco.json         COCO-style grounding: one entry per (image, caption)

Detection annotations hold boxes of the objects whose category is in the dataset's category
list (others are drawn, unannotated distractors); each carries its `attributes` (shape, colour,
size, pattern, visible fraction, whole-shape box) besides the standard fields. Category ids
are 1..C in category order; there is no Roboflow placeholder category.

The grounding file follows the official GLIP/MDETR "mixed" format: each entry of `images`
is one caption of one image (`file_name`, `original_img_id`, `caption`,
`tokens_positive_eval`: per phrase its [[start, end]] character spans, plus `phrases` with
their text), and each annotation is one box of one phrase (`tokens_positive`, `phrase_ids`,
`category_id` 1). pycocotools reads both files.

The dataset is written into a temporary folder beside OUT and moved into place at the end, so
an interrupted run leaves no half-written dataset under OUT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from glipcli import __version__
from glipcli.errors import GlipError
from glipcli.io import json_text
from glipcli.nano.synthetic.captions import Caption
from glipcli.nano.synthetic.tasks import CategoryScheme, SceneRules, task_categories
from glipcli.nano.synthetic.vocabulary import WORDINGS, HeldOut, category_text
from glipcli.nano.synthetic.world import Scene, SyntheticWorld, WorldConfig
from glipcli.outputs import OutputGuard
from glipcli.prompts.prompt_file import ClassPrompt, PromptSpec

DETECTION_FILE = "_annotations.coco.json"
GROUNDING_FILE = "_grounding.coco.json"
MANIFEST_FILE = "synthetic.json"
PROMPTS_DIR = "prompts"
SPLITS = ("train", "valid", "test")
IMAGE_FORMATS = ("jpg", "png")


@dataclass(frozen=True)
class SplitReport:
    """What one split holds: images, annotated boxes, captions and grounded phrases."""

    name: str
    images: int
    boxes: int
    captions: int
    phrases: int


@dataclass(frozen=True)
class DatasetReport:
    root: Path
    task: str
    seed: int
    categories: list[str]
    splits: tuple[SplitReport, ...]


def write_coco_dataset(out_dir: str | Path, n_train: int = 1000, n_valid: int = 100, n_test: int = 100, *,
                       seed: int = 0, task: str = "pretrain", held_out: HeldOut | None = None,
                       categories: CategoryScheme | None = None,
                       split_rules: Mapping[str, SceneRules] | None = None,
                       config: WorldConfig | None = None, captions_per_image: int = 2,
                       image_format: str = "jpg", overwrite: bool = False,
                       progress: Callable[[int, int], None] | None = None) -> DatasetReport:
    """Write a synthetic dataset (see the module docstring) and return what it holds.

    task: `pretrain`, `unseen-combos`, `novel-shape` or `all` (`glipcli.nano.synthetic.tasks`);
    it gives every split's scene rules and the default category scheme. split_rules overrides
    the rules of single splits. Splits with 0 images are not written. An existing, non-empty
    OUT is replaced only with `overwrite` and only if it is a synthetic dataset itself."""
    out_dir = Path(out_dir)
    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    for split, n in counts.items():
        if n < 0:
            raise GlipError(f"--{split} must be >= 0, got {n}")
    if sum(counts.values()) == 0:
        raise GlipError("nothing to write: every split has 0 images")
    if image_format not in IMAGE_FORMATS:
        raise GlipError(f"unknown image format {image_format!r}; choose one of: {', '.join(IMAGE_FORMATS)}")
    if captions_per_image < 0:
        raise GlipError(f"captions per image must be >= 0, got {captions_per_image}")
    _check_target(out_dir, overwrite)

    world = SyntheticWorld(seed, config=config, held_out=held_out)
    rules = {split: world.rules(task) for split in SPLITS}
    for split, override in (split_rules or {}).items():
        if split not in SPLITS:
            raise GlipError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
        rules[split] = override
    scheme = categories or task_categories(task, world.held_out)
    active = [s for s in SPLITS if counts[s] > 0]
    names = scheme.categories([rules[s] for s in active])
    if not names:
        raise GlipError("the category scheme gives no categories for these scene rules")

    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    total, done = sum(counts.values()), 0
    try:
        tmp.mkdir(parents=True)
        reports = []
        for split in active:
            def step(k: int, _done: int = done) -> None:
                if progress is not None:
                    progress(_done + k, total)
            reports.append(_write_split(tmp / split, world, rules[split], split, counts[split], scheme, names,
                                        captions_per_image, image_format, step))
            done += counts[split]
        _write_prompts(tmp / PROMPTS_DIR, names)
        manifest = {
            "generator": "glip synth-data",
            "seed": world.seed,
            "task": task,
            "held_out": world.held_out.to_dict(),
            "categories": {"kind": scheme.kind, "names": names},
            "rules": {s: _rules_dict(rules[s]) for s in active},
            "world": dataclasses.asdict(world.config),
            "captions_per_image": captions_per_image,
            "image_format": image_format,
            "splits": {r.name: dataclasses.asdict(r) for r in reports},
            "box_convention": "COCO xywh of the visible extent (occluded parts excluded)",
            "versions": _versions(),
        }
        (tmp / MANIFEST_FILE).write_text(json_text(manifest, out_dir / MANIFEST_FILE, indent=2) + "\n")
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DatasetReport(root=out_dir, task=task, seed=world.seed, categories=names, splits=tuple(reports))


def _versions() -> dict[str, str]:
    """The package versions the pixels depend on (numpy's random streams, Pillow's rasteriser)."""
    import numpy
    import PIL

    return {"glipcli": __version__, "numpy": numpy.__version__, "pillow": PIL.__version__}


def _check_target(out_dir: Path, overwrite: bool) -> None:

    OutputGuard().folder(out_dir, "OUT_DIR")  # a folder (or none yet) that can be created, not a system one
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise GlipError(f"{out_dir}: folder exists and is not empty (pass --overwrite to replace "
                            "a synthetic dataset)")
        if not (out_dir / MANIFEST_FILE).is_file():
            raise GlipError(f"{out_dir}: not a dataset written by glip synth-data (no {MANIFEST_FILE}); "
                            "refusing to replace it")


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _rules_dict(rules: SceneRules) -> dict:
    return {
        "name": rules.name,
        "shapes": list(rules.shapes),
        "colours": list(rules.colours),
        "exclude_combos": sorted(f"{c} {s}" for c, s in rules.exclude_combos),
        "focus_combos": sorted(f"{c} {s}" for c, s in rules.focus_combos),
        "focus_max": rules.focus_max,
    }


def _write_split(folder: Path, world: SyntheticWorld, rules: SceneRules, split: str, n: int,
                 scheme: CategoryScheme, names: list[str], captions_per_image: int, image_format: str,
                 step: Callable[[int], None]) -> SplitReport:
    folder.mkdir(parents=True)
    category_id = {name: i + 1 for i, name in enumerate(names)}
    det_images, det_anns = [], []
    gr_images, gr_anns = [], []
    n_phrases = 0
    for i in range(n):
        scene = world.scene(i, rules, stream=split)
        image_id = i + 1
        file_name = f"{i:06d}.{image_format}"
        _save_image(scene, folder / file_name, image_format)
        det_images.append({"id": image_id, "file_name": file_name, "width": scene.width, "height": scene.height})
        for obj in scene.objects:
            name = scheme.name_of(obj.colour, obj.shape)
            if name not in category_id:
                continue
            det_anns.append({
                "id": len(det_anns) + 1, "image_id": image_id, "category_id": category_id[name],
                "bbox": list(obj.box), "area": obj.area, "iscrowd": 0,
                "attributes": {"shape": obj.shape, "colour": obj.colour, "size": obj.size,
                               "pattern": obj.pattern, "visible_fraction": round(obj.visible_fraction, 4),
                               "full_bbox": list(obj.full_box)},
            })
        for caption in world.captions(scene, captions_per_image):
            n_phrases += len(caption.phrases)
            _add_grounding(gr_images, gr_anns, scene, caption, image_id, file_name)
        step(i + 1)
    info = {"description": f"glip synthetic shapes, task {rules.name}, split {split}", "seed": world.seed}
    categories = [{"id": category_id[nm], "name": nm, "supercategory": scheme.kind} for nm in names]
    _dump(folder / DETECTION_FILE, {"info": info, "licenses": [], "categories": categories,
                                    "images": det_images, "annotations": det_anns})
    _dump(folder / GROUNDING_FILE, {"info": info, "licenses": [],
                                    "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
                                    "images": gr_images, "annotations": gr_anns})
    return SplitReport(name=split, images=n, boxes=len(det_anns), captions=len(gr_images), phrases=n_phrases)


def _add_grounding(images: list, anns: list, scene: Scene, caption: Caption, image_id: int, file_name: str) -> None:
    entry_id = len(images) + 1
    images.append({
        "id": entry_id, "original_img_id": image_id, "file_name": file_name,
        "width": scene.width, "height": scene.height, "caption": caption.text,
        "tokens_positive_eval": [[[p.start, p.end]] for p in caption.phrases],
        "phrases": [{"text": p.text, "start": p.start, "end": p.end} for p in caption.phrases],
        "relation": caption.relation,
    })
    for phrase_id, phrase in enumerate(caption.phrases):
        for index in phrase.objects:
            obj = scene.objects[index]
            anns.append({
                "id": len(anns) + 1, "image_id": entry_id, "category_id": 1, "bbox": list(obj.box),
                "area": obj.area, "iscrowd": 0, "tokens_positive": [[phrase.start, phrase.end]],
                "phrase_ids": phrase_id,
            })


def _save_image(scene: Scene, path: Path, image_format: str) -> None:
    image = scene.to_pil()
    if image_format == "jpg":
        image.save(path, format="JPEG", quality=92, subsampling=0)
    else:
        image.save(path, format="PNG", compress_level=1)


def _dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")


def _write_prompts(folder: Path, names: list[str]) -> None:
    """One prompt file per wording: class name = category, grounded text = the wording's text."""
    folder.mkdir(parents=True)
    for wording in WORDINGS:
        classes = [ClassPrompt(name=name, text=None if wording == "plain" else category_text(name, wording))
                   for name in names]
        header = (f"Synthetic-world categories in the {wording} wording"
                  + ("" if wording == "plain" else " (never used in pre-training)") + ".")
        (folder / f"{wording}.yaml").write_text(PromptSpec(classes=classes).to_yaml(header=header))
