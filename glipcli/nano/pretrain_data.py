"""Pre-training data: detection + grounding records, and the per-sample training text.

GLIP pre-trains on a mixture of detection data (Objects365) and grounding data (GoldG captions
with phrase boxes). Both become the same thing, an image with a caption and, per box, the
caption tokens it is grounded to:

- **detection sample**: a caption listing category names, `"blue square. red circle. ..."`
  (the evaluation caption form, names joined by `". "`). A vocabulary too large for one caption
  (the synthetic world's 102 colour-shape categories need ~300 tokens) is handled as the
  official recipe does: each image gets its own caption holding ALL of its positive
  categories plus randomly sampled negative categories, in random order, up to `max_labels`
  names. The number of negatives is random (half of the time the caption is filled up to
  `max_labels`, otherwise a uniform draw), so the model sees short and long prompts. A share
  `hard_negative_share` of the negatives is drawn among the categories sharing a word with a
  positive one (`purple circle` for a `purple star`): with a vocabulary built from a few
  colours and shapes these are the negatives that teach attribute binding (an addition to the
  official recipe, which samples uniformly; 0 gives the uniform rule). Where the data names
  every box at several levels (the synthetic world: `red circle`, `circle`, `red`), a share
  `attribute_share` of the detection samples names the boxes by one attribute instead
  (`circle. square. star.`, negatives from the same level), as datasets with coarse labels do:
  each word is then taught on its own, which is what a new combination of known words needs.
- **grounding sample**: one of the image's captions, each phrase grounded to its boxes;
  objects the caption does not mention are background for it, as in GoldG. An image without
  a caption gives a detection sample instead (and one without boxes a grounding sample).

Sources (`PretrainSource`): `WorldSource` renders the synthetic world on the fly (scene `i` of
the `pretrain` task, train stream: deterministic by seed, never a held-out combination or
shape); `CocoGroundingSource` reads a `glip synth-data` folder (`train/_annotations.coco.json`
+ `train/_grounding.coco.json`) or any COCO detection split with an optional grounding file
in the official mixed format.

`PretrainDataset` turns item keys `(epoch, position, record index, step)` into augmented samples;
every random choice of a sample (caption, negatives, order, flip) comes from a generator seeded
with (seed, epoch, position), the batch's scale and kind (detection or grounding: the share of
grounding batches is `grounding_ratio`) from one seeded with (seed, epoch, step), so a sample is the same whenever and wherever it is drawn
and an interrupted run resumes with exactly the samples it would have seen. A horizontal flip
swaps the words `left` and `right` of a grounding caption (and moves the phrase spans).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from glipcli.config import InputConfig
from glipcli.data.coco import clean_box, load_coco
from glipcli.data.train_transforms import TrainTransform, train_min_sizes
from glipcli.data.transforms import batch_images, load_image
from glipcli.errors import GlipError, excerpt
from glipcli.nano.synthetic import CategoryScheme, SyntheticWorld, task_categories
from glipcli.prompts.caption import Phrase, detection_caption
from glipcli.prompts.encoding import encode_prompt
from glipcli.prompts.tokenizer import load_tokenizer

KINDS = ("detection", "grounding")


@dataclass(frozen=True)
class GroundedCaption:
    """A caption with phrases: spans[p] = [start, end) of phrase p; boxes [M, 4] inclusive xyxy
    in image pixels, box m grounded to phrase `phrase_of_box[m]`."""

    text: str
    spans: tuple[tuple[int, int], ...]
    boxes: np.ndarray
    phrase_of_box: np.ndarray


@dataclass
class PretrainRecord:
    """One image: detection boxes [N, 4] (inclusive xyxy) with category labels [N], and its
    grounding captions (possibly none).

    attribute_labels: optional coarser names of the same boxes, per attribute (`{"shape": [N],
    "colour": [N]}`, indices into the source's categories): a detection sample may name its
    boxes by one attribute instead (`circle. square.`, see `TextSettings.attribute_share`)."""

    image: Image.Image
    boxes: np.ndarray
    labels: np.ndarray
    captions: list[GroundedCaption] = field(default_factory=list)
    attribute_labels: dict[str, np.ndarray] = field(default_factory=dict)


class PretrainSource(Protocol):
    categories: list[str]
    # Category indices per attribute group ("shape": [...]); empty when boxes have one naming only.
    category_groups: dict[str, list[int]]

    def __len__(self) -> int: ...

    def record(self, index: int) -> PretrainRecord: ...

    def describe(self) -> dict[str, Any]: ...


def _xyxy(box: Sequence[float], width: int, height: int) -> np.ndarray | None:
    out, _ = clean_box(list(box), width, height)
    return out


class WorldSource:
    """`images` scenes of the synthetic world's `pretrain` task (train stream), rendered on demand.

    Categories: the colour-shape names (`red circle`), then the seen shapes (`circle`) and the
    colours (`red`); every box carries its colour-shape label and, as `attribute_labels`, its
    shape and colour labels."""

    def __init__(self, seed: int = 0, images: int = 100_000, held_out=None, config=None,
                 captions_per_image: int = 2):
        if images < 1:
            raise GlipError(f"--world-images must be at least 1 (got {images})")
        self.world = SyntheticWorld(seed, config=config, held_out=held_out)
        self.rules = self.world.rules("pretrain")
        self.scheme = task_categories("pretrain", self.world.held_out)
        combos = self.scheme.categories([self.rules])
        shapes = CategoryScheme("shape").categories([self.rules])
        colours = CategoryScheme("colour").categories([self.rules])
        self.categories = combos + shapes + colours
        self._index = {name: i for i, name in enumerate(self.categories)}
        self.category_groups = {"shape": [self._index[n] for n in shapes],
                                "colour": [self._index[n] for n in colours]}
        self.images = int(images)
        self.captions_per_image = captions_per_image

    def __len__(self) -> int:
        return self.images

    def record(self, index: int) -> PretrainRecord:
        scene = self.world.scene(index, self.rules, stream="train")
        w, h = scene.width, scene.height
        boxes, labels, shape_labels, colour_labels, box_of_object = [], [], [], [], {}
        for i, obj in enumerate(scene.objects):
            xyxy = _xyxy(obj.box, w, h)
            if xyxy is None:
                continue
            box_of_object[i] = xyxy
            name = self.scheme.name_of(obj.colour, obj.shape)
            if name in self._index:
                boxes.append(xyxy)
                labels.append(self._index[name])
                shape_labels.append(self._index[obj.shape])
                colour_labels.append(self._index[obj.colour])
        captions = []
        for caption in self.world.captions(scene, self.captions_per_image):
            cap_boxes, phrase_ids = [], []
            for p, phrase in enumerate(caption.phrases):
                for obj in phrase.objects:
                    if obj in box_of_object:
                        cap_boxes.append(box_of_object[obj])
                        phrase_ids.append(p)
            captions.append(GroundedCaption(caption.text, tuple((p.start, p.end) for p in caption.phrases),
                                            _boxes(cap_boxes), np.asarray(phrase_ids, dtype=np.int64)))
        attributes = {"shape": np.asarray(shape_labels, dtype=np.int64),
                      "colour": np.asarray(colour_labels, dtype=np.int64)}
        return PretrainRecord(scene.to_pil(), _boxes(boxes), np.asarray(labels, dtype=np.int64), captions,
                              attributes)

    def describe(self) -> dict[str, Any]:
        import dataclasses

        return {"kind": "world", "seed": self.world.seed, "images": self.images, "task": "pretrain",
                "held_out": self.world.held_out.to_dict(), "world": dataclasses.asdict(self.world.config),
                "captions_per_image": self.captions_per_image, "categories": len(self.categories)}


def _boxes(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 4), np.float32)


class CocoGroundingSource:
    """A COCO detection split (`DIR/train/_annotations.coco.json`, or `ann_file`) and, when present,
    its grounding captions (`_grounding.coco.json` beside it: entries `original_img_id`, `caption`,
    `phrases` or `tokens_positive_eval`; annotations with `bbox` and `phrase_ids`)."""

    GROUNDING_FILE = "_grounding.coco.json"

    def __init__(self, data_dir: str | Path | None = None, ann_file: str | Path | None = None,
                 grounding_file: str | Path | None = None):
        if ann_file is None:
            if data_dir is None:
                raise GlipError("no pre-training data: pass --data DIR or let the world be generated")
            ann_file = Path(data_dir) / "train" / "_annotations.coco.json"
            if not Path(ann_file).is_file():
                raise GlipError(f"{data_dir}: no train/_annotations.coco.json (expected a `glip synth-data` "
                                "folder or the Roboflow COCO layout)")
        ann_file = Path(ann_file)
        self.data = load_coco(ann_file, ann_file.parent, "train")
        self.categories = list(self.data.classes)
        if grounding_file is None:
            candidate = ann_file.parent / self.GROUNDING_FILE
            grounding_file = candidate if candidate.is_file() else None
        self.category_groups: dict[str, list[int]] = {}
        self.grounding_file = None if grounding_file is None else Path(grounding_file)
        self._captions = self._read_grounding(self.grounding_file) if self.grounding_file else {}
        self.ann_file = ann_file

    def _read_grounding(self, path: Path) -> dict[int, list[GroundedCaption]]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            by_image_id = {r.image_id: r for r in self.data.images}
            anns: dict[Any, list[dict]] = {}
            for ann in data.get("annotations", []):
                anns.setdefault(ann["image_id"], []).append(ann)
            out: dict[int, list[GroundedCaption]] = {}
            for entry in data["images"]:
                record = by_image_id.get(entry.get("original_img_id", entry["id"]))
                if record is None:
                    raise GlipError(f"{path}: caption {entry['id']} names image "
                                    f"{excerpt(entry.get('original_img_id'))}, which is not in {self.data.ann_path}")
                text = entry["caption"]
                if "phrases" in entry:
                    spans = tuple((int(p["start"]), int(p["end"])) for p in entry["phrases"])
                else:
                    spans = tuple((int(s[0][0]), int(s[-1][1])) for s in entry["tokens_positive_eval"])
                boxes, phrase_ids = [], []
                for ann in anns.get(entry["id"], []):
                    xyxy = _xyxy(ann["bbox"], record.width, record.height)
                    phrase = ann.get("phrase_ids")
                    if xyxy is None or phrase is None or not 0 <= int(phrase) < len(spans):
                        continue
                    boxes.append(xyxy)
                    phrase_ids.append(int(phrase))
                out.setdefault(record.index, []).append(
                    GroundedCaption(text, spans, _boxes(boxes), np.asarray(phrase_ids, dtype=np.int64)))
            return out
        except GlipError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise GlipError(f"{path}: not a readable grounding file ({type(exc).__name__}: {exc})") from None

    def __len__(self) -> int:
        return len(self.data.images)

    def record(self, index: int) -> PretrainRecord:
        rec = self.data.images[index]
        return PretrainRecord(load_image(rec.path), rec.boxes, rec.labels, self._captions.get(index, []))

    def usable_indices(self) -> list[int]:
        """Images with a box or a caption with a box (the others teach nothing)."""
        return [r.index for r in self.data.images
                if r.num_boxes > 0 or any(len(c.boxes) for c in self._captions.get(r.index, []))]

    def describe(self) -> dict[str, Any]:
        return {"kind": "coco", "ann_file": str(self.ann_file.resolve()),
                "grounding_file": None if self.grounding_file is None else str(self.grounding_file.resolve()),
                "images": len(self), "captions": sum(len(v) for v in self._captions.values()),
                "categories": len(self.categories)}


# -- the training text of a sample -----------------------------------------------------------------
@dataclass(frozen=True)
class TextSettings:
    """grounding_ratio: chance a batch is of grounding samples (one of its image's captions each);
    max_labels: category names in a detection caption at most; hard_negative_share: share of
    the negatives drawn among categories sharing a word with a positive; attribute_share: chance
    that a detection sample of a record with `attribute_labels` names its boxes by one attribute
    (drawn uniformly among them; its negatives from that attribute's categories); max_tokens:
    the model's token budget ([CLS] and [SEP] included)."""

    grounding_ratio: float = 0.5
    max_labels: int = 12
    hard_negative_share: float = 0.5
    attribute_share: float = 0.0
    max_tokens: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.grounding_ratio <= 1.0:
            raise GlipError(f"--grounding-ratio must be in [0, 1] (got {self.grounding_ratio})")
        if self.max_labels < 1:
            raise GlipError(f"--max-labels must be at least 1 (got {self.max_labels})")
        if not 0.0 <= self.hard_negative_share <= 1.0:
            raise GlipError(f"--hard-negatives must be in [0, 1] (got {self.hard_negative_share})")
        if not 0.0 <= self.attribute_share <= 1.0:
            raise GlipError(f"--attribute-labels must be in [0, 1] (got {self.attribute_share})")


def sample_detection_labels(positives: Sequence[int], categories: Sequence[str], rng: random.Random,
                            max_labels: int, hard_share: float = 0.0,
                            candidates: Sequence[int] | None = None) -> list[int]:
    """The categories of one detection caption: every positive (even beyond `max_labels`) plus
    negatives sampled from `candidates` (default: every category), shuffled. Half of the time the
    caption is filled to `max_labels`, else the number of negatives is uniform in
    [0, max_labels - positives]."""
    pos = sorted(set(int(p) for p in positives))
    room = max(0, max_labels - len(pos))
    candidates = range(len(categories)) if candidates is None else candidates
    pool = [c for c in candidates if c not in set(pos)]
    n_neg = min(len(pool), room if rng.random() < 0.5 else rng.randint(0, room))
    negatives: list[int] = []
    if n_neg and hard_share > 0 and pos:
        words = {w for p in pos for w in categories[p].split()}
        hard = [c for c in pool if words.intersection(categories[c].split())]
        n_hard = min(len(hard), int(round(n_neg * hard_share)))
        negatives = rng.sample(hard, n_hard)
    rest = [c for c in pool if c not in set(negatives)]
    negatives += rng.sample(rest, n_neg - len(negatives))
    labels = pos + negatives
    rng.shuffle(labels)
    return labels


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def swap_left_right(text: str, spans: Sequence[tuple[int, int]]) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The caption of the mirrored image: `left` <-> `right` (whole words), spans moved with the text."""
    pieces, shifts, last = [], [], 0
    for m in _LEFT_RIGHT.finditer(text):
        pieces.append(text[last:m.start()])
        word = "right" if m.group(1) == "left" else "left"
        pieces.append(word)
        shifts.append((m.end(), len(word) - (m.end() - m.start())))
        last = m.end()
    if not shifts:
        return text, tuple(spans)
    pieces.append(text[last:])

    def moved(pos: int) -> int:
        return pos + sum(delta for end, delta in shifts if end <= pos)

    return "".join(pieces), tuple((moved(s), moved(e)) for s, e in spans)


@dataclass
class SampleText:
    """caption, its phrases, and per kept box the phrase it is grounded to."""

    kind: str
    caption: str
    phrases: list[Phrase]
    boxes: np.ndarray
    phrase_of_box: np.ndarray


def sample_text(record: PretrainRecord, categories: Sequence[str], rng: random.Random,
                settings: TextSettings, grounding: bool,
                category_groups: dict[str, list[int]] | None = None) -> SampleText:
    """The caption of one sample (see the module docstring): one of the record's captions when
    `grounding` (and it has one), else a detection prompt, naming the boxes by their labels or
    (chance `settings.attribute_share`) by one attribute, whose categories `category_groups`
    lists. Draws from `rng` in a fixed pattern (no extra draw when attribute naming is off)."""
    usable = [c for c in record.captions if len(c.boxes)]
    pick = rng.randrange(len(usable)) if usable else 0
    if (grounding and usable) or (len(record.boxes) == 0 and usable):
        cap = usable[pick]
        phrases = [Phrase(cap.text[s:e], s, e) for s, e in cap.spans]
        return SampleText("grounding", cap.text, phrases, cap.boxes, cap.phrase_of_box)
    box_labels, candidates, hard_share = record.labels, None, settings.hard_negative_share
    if category_groups:  # an attribute name is never a negative of a full name ("red" for a red circle)
        grouped = {c for members in category_groups.values() for c in members}
        candidates = [c for c in range(len(categories)) if c not in grouped]
    attributes = sorted(a for a in record.attribute_labels if category_groups and a in category_groups)
    if settings.attribute_share > 0 and attributes and rng.random() < settings.attribute_share:
        attribute = attributes[rng.randrange(len(attributes))]
        box_labels, candidates = record.attribute_labels[attribute], category_groups[attribute]
    labels = sample_detection_labels(box_labels.tolist(), categories, rng, settings.max_labels,
                                     hard_share, candidates)
    if not labels:
        raise GlipError("an image without boxes or captions cannot be a training sample")
    caption, phrases = detection_caption([categories[c] for c in labels])
    position = {c: i for i, c in enumerate(labels)}
    return SampleText("detection", caption, phrases, record.boxes,
                      np.asarray([position[int(c)] for c in box_labels], dtype=np.int64))


# -- samples and batches ---------------------------------------------------------------------------
@dataclass
class PretrainSample:
    image: torch.Tensor  # [3, h, w] normalised
    boxes: torch.Tensor  # [G, 4] xyxy in the resized (and flipped) image
    positive_map: torch.Tensor  # [G, n] binary token targets
    input_ids: torch.Tensor  # [n] int64, [CLS] ... [SEP]
    size: tuple[int, int]
    kind: str
    index: int


@dataclass
class PretrainBatch:
    images: torch.Tensor  # [B, 3, H, W]
    sizes: list[tuple[int, int]]
    boxes: list[torch.Tensor]
    positive_maps: list[torch.Tensor]
    input_ids: list[torch.Tensor]
    kinds: list[str]
    indices: list[int]


def sample_rng(seed: int, epoch: int, position: int) -> random.Random:
    return random.Random(f"glip-pretrain/{seed}/{epoch}/{position}")


def batch_rng(seed: int, epoch: int, step: int) -> random.Random:
    return random.Random(f"glip-pretrain-batch/{seed}/{epoch}/{step}")


def with_steps(batches: Sequence[Sequence[tuple[int, int, int]]], start: int = 0
               ) -> list[list[tuple[int, int, int, int]]]:
    """`EpochBatches.batches(epoch, start)` items with their step appended: the keys of `PretrainDataset`."""
    return [[(*item, start + k) for item in batch] for k, batch in enumerate(batches)]


class PretrainDataset(Dataset):
    """Items are `(epoch, position, record index, step)` keys (`with_steps`).

    augment: the official multi-scale resize (short sides scaled to the model's test size) and a
    horizontal flip with probability 0.5. The scale and the kind of sample (detection or
    grounding) are drawn once per step (`batch_plan`, seeded by seed, epoch, step): the images of
    a batch share a scale and are not padded up to the largest one, its captions are of one kind
    and of similar length, so the cheaper scales and shorter captions really cost less. Without
    augmentation images are resized to the test size, never flipped."""

    def __init__(self, source: PretrainSource, input_cfg: InputConfig, settings: TextSettings, seed: int,
                 augment: bool = True):
        self.source = source
        self.input_cfg = input_cfg
        self.settings = settings
        self.seed = seed
        self.augment = augment
        self.sizes = train_min_sizes(input_cfg) if augment else (input_cfg.min_size,)
        self.tokenizer = load_tokenizer()

    def __len__(self) -> int:
        return len(self.source)

    def batch_plan(self, epoch: int, step: int) -> tuple[int, bool]:
        """What the samples of step `step` of `epoch` share: the images' short side, and whether
        they are grounding samples (chance `grounding_ratio`; else detection samples). One kind
        per batch keeps the captions of a batch of similar length (less padding)."""
        rng = batch_rng(self.seed, epoch, step)
        return rng.choice(self.sizes), rng.random() < self.settings.grounding_ratio

    def __getitem__(self, key: tuple[int, int, int, int]) -> PretrainSample:
        epoch, position, index, step = key
        rng = sample_rng(self.seed, epoch, position)
        record = self.source.record(index)
        scale, grounding = self.batch_plan(epoch, step)
        text = sample_text(record, self.source.categories, rng, self.settings, grounding,
                           getattr(self.source, "category_groups", None))
        resize = TrainTransform(self.input_cfg, (scale,), self.input_cfg.max_size, flip_prob=0.0)
        tensor, boxes, (h, w) = resize(record.image, torch.from_numpy(np.array(text.boxes, np.float32)), rng)
        flip = self.augment and rng.random() < 0.5
        caption, phrases = text.caption, text.phrases
        if flip:
            tensor = tensor.flip(-1)
            boxes = torch.stack([w - boxes[:, 2] - 1, boxes[:, 1], w - boxes[:, 0] - 1, boxes[:, 3]], dim=1)
            if text.kind == "grounding":
                caption, spans = swap_left_right(caption, [(p.start, p.end) for p in phrases])
                phrases = [Phrase(caption[s:e], s, e) for s, e in spans]
        encoded = encode_prompt(caption, phrases, max_length=self.settings.max_tokens, tokenizer=self.tokenizer,
                                strict_spans=False)
        n = encoded.num_tokens
        pmap = encoded.positive_map[:, :n]
        rows = pmap[torch.from_numpy(text.phrase_of_box)] if len(text.phrase_of_box) else pmap.new_zeros((0, n))
        keep = rows.sum(-1) > 0  # boxes whose phrase lost its tokens (cut by the budget) are dropped
        return PretrainSample(tensor, boxes[keep], rows[keep], encoded.input_ids[0, :n].clone(), (h, w),
                              text.kind, index)


class PretrainCollate:
    def __init__(self, size_divisible: int):
        self.size_divisible = size_divisible

    def __call__(self, samples: Sequence[PretrainSample]) -> PretrainBatch:
        images, sizes = batch_images([s.image for s in samples], self.size_divisible)
        return PretrainBatch(images, sizes, [s.boxes for s in samples], [s.positive_map for s in samples],
                             [s.input_ids for s in samples], [s.kind for s in samples], [s.index for s in samples])
