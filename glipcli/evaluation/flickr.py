"""Flickr30K Entities phrase grounding: Recall@1/5/10 with the any-box protocol of the official GLIP eval.

A pure function over ranked predicted boxes and the official Flickr30K Entities annotations (no
model). Ground truth is read from the dataset's own release, the files the official GLIP / MDETR
evaluator reads (`flickr30k_entities/`):

- `<split>.txt`: the image ids of the split (`val`, `test`, `train`);
- `Sentences/<image id>.txt`: one sentence per line, phrases marked `[/EN#<phrase id>/<type>[/<type>...]
  words of the phrase]`;
- `Annotations/<image id>.xml`: per object its phrase ids (`<name>`, one or more) and either a
  `<bndbox>` (xmin ymin xmax ymax) or `<nobndbox>` / `<scene>`.

Protocol (the official default, `FLICKR_GT_TYPE: separate`, "ANY-BOX"):

- a sentence's phrases to ground are those whose phrase id has at least one box in the image (in
  sentence order; a phrase id may occur twice); a sentence without any is not evaluated;
- the prediction for a sentence lists, per such phrase, its boxes ranked best first (xyxy);
- a phrase is correct at k when any of its top-k boxes has IoU >= 0.5 with ANY of the phrase's
  ground-truth boxes, kept separate (`merge_boxes=True` gives the MERGED-BOX protocol: the phrase's
  boxes are replaced by their smallest enclosing box, as `FLICKR_GT_TYPE: merged` does);
- IoU uses continuous coordinates, area = (x2 - x1) * (y2 - y1), as the official evaluator does on the
  integer XML boxes; a phrase with no predicted box is a miss;
- Recall@k = correct phrases / evaluated phrases, over all phrases and per phrase type (`people`,
  `clothing`, ...; a phrase of several types counts in each); the upper bound is recall with every
  predicted box. Every evaluated sentence needs exactly one prediction (else a GlipError).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glipcli.errors import GlipError

IOU_THRESHOLD = 0.5
DEFAULT_KS = (1, 5, 10)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FlickrPhrase:
    """A phrase to ground: its id, text, types, and character span [start, end) in the caption."""

    phrase_id: str
    text: str
    types: tuple[str, ...]
    first_word_index: int
    span: tuple[int, int]


@dataclass(frozen=True)
class FlickrSentence:
    """One evaluated sentence: `sentence_id` is its line index in the image's Sentences file."""

    image_id: str
    sentence_id: int
    caption: str
    phrases: tuple[FlickrPhrase, ...]


@dataclass(frozen=True)
class FlickrGroundTruth:
    """The evaluated sentences of a split and the boxes of every phrase id, per image."""

    split: str
    image_ids: tuple[str, ...]
    sentences: tuple[FlickrSentence, ...]
    boxes: Mapping[str, Mapping[str, np.ndarray]]  # image id -> phrase id -> [N, 4] xyxy
    merged: bool = False

    @property
    def num_phrases(self) -> int:
        return sum(len(s.phrases) for s in self.sentences)

    @classmethod
    def load(cls, root: str | Path, split: str, merge_boxes: bool = False,
             image_ids: Sequence[str] | None = None) -> "FlickrGroundTruth":
        """Read `root/<split>.txt`, `root/Sentences/*.txt` and `root/Annotations/*.xml` (the official
        Flickr30K Entities release, Annotations.zip and Sentences.zip unpacked). `image_ids`: evaluate
        only these images of the split."""
        root = Path(root)
        if split not in SPLITS:
            raise GlipError(f"Flickr30K Entities split must be one of {', '.join(SPLITS)} (got {split!r})")
        listing = root / f"{split}.txt"
        if not listing.is_file():
            raise GlipError(f"{listing}: no such file (expected the Flickr30K Entities release: "
                            f"{split}.txt, Sentences/, Annotations/)")
        ids = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        if image_ids is not None:
            unknown = set(image_ids) - set(ids)
            if unknown:
                raise GlipError(f"images {sorted(unknown)[:5]} are not in {listing}")
            wanted = set(image_ids)
            ids = [i for i in ids if i in wanted]
        boxes: dict[str, dict[str, np.ndarray]] = {}
        sentences: list[FlickrSentence] = []
        for image_id in ids:
            boxes[image_id] = read_annotation_boxes(root / "Annotations" / f"{image_id}.xml", merge_boxes)
            for sentence in read_sentences(root / "Sentences" / f"{image_id}.txt", image_id):
                kept = tuple(p for p in sentence.phrases if p.phrase_id in boxes[image_id])
                if kept:
                    sentences.append(FlickrSentence(image_id, sentence.sentence_id, sentence.caption, kept))
        return cls(split, tuple(ids), tuple(sentences), boxes, merge_boxes)


def parse_sentence(line: str, image_id: str = "", sentence_id: int = 0) -> FlickrSentence:
    """One line of a Sentences file: the plain caption and ALL its marked phrases (boxed or not)."""
    words: list[str] = []
    phrases: list[FlickrPhrase] = []
    current: list[str] | None = None
    start_word, phrase_id, types = 0, "", ()
    for token in line.split():
        if current is None and token.startswith("["):
            parts = token.split("/")
            if len(parts) < 2 or not parts[1].startswith("EN#"):
                raise GlipError(f"{image_id}: sentence {sentence_id}: malformed phrase marker {token!r}")
            current, start_word, phrase_id, types = [], len(words), parts[1][3:], tuple(parts[2:])
            continue
        if current is not None and token.endswith("]"):
            token = token[:-1]
            current.append(token)
            words.append(token)
            phrases.append(FlickrPhrase(phrase_id, " ".join(current), types, start_word, (0, 0)))
            current = None
            continue
        if current is not None:
            current.append(token)
        words.append(token)
    if current is not None:
        raise GlipError(f"{image_id}: sentence {sentence_id}: unterminated phrase (missing ']')")
    caption = " ".join(words)
    starts = []
    offset = 0
    for word in words:
        starts.append(offset)
        offset += len(word) + 1
    out = []
    for p in phrases:
        begin = starts[p.first_word_index] if p.first_word_index < len(starts) else len(caption)
        out.append(FlickrPhrase(p.phrase_id, p.text, p.types, p.first_word_index, (begin, begin + len(p.text))))
    return FlickrSentence(image_id, sentence_id, caption, tuple(out))


def read_sentences(path: Path, image_id: str) -> list[FlickrSentence]:
    """Every non-empty line of a Sentences file, numbered as the official evaluator numbers them."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise GlipError(f"{path}: no such Flickr30K Entities sentence file") from None
    return [parse_sentence(line, image_id, i) for i, line in enumerate(l for l in lines if l)]


def read_annotation_boxes(path: Path, merge_boxes: bool = False) -> dict[str, np.ndarray]:
    """phrase id -> [N, 4] xyxy boxes of an Annotations XML (phrases without a box are absent)."""
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise GlipError(f"{path}: no such Flickr30K Entities annotation file") from None
    except ET.ParseError as exc:
        raise GlipError(f"{path}: not valid XML ({exc})") from None
    found: dict[str, list[list[float]]] = defaultdict(list)
    for obj in tree.getroot().findall("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        try:
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise GlipError(f"{path}: a bndbox lacks xmin/ymin/xmax/ymax") from None
        for name in obj.findall("name"):
            if name.text:
                found[name.text.strip()].append(coords)
    out = {}
    for pid, boxes in found.items():
        arr = np.asarray(boxes, np.float64)
        if merge_boxes and len(arr) > 1:
            arr = np.asarray([[arr[:, 0].min(), arr[:, 1].min(), arr[:, 2].max(), arr[:, 3].max()]])
        out[pid] = arr
    return out


@dataclass(frozen=True)
class FlickrPrediction:
    """Ranked boxes (xyxy, best first) per phrase of one sentence, phrases in `FlickrSentence` order."""

    image_id: str
    sentence_id: int
    boxes: Sequence[Sequence[Sequence[float]]]


@dataclass(frozen=True)
class FlickrMetrics:
    """Recall@k (k -> fraction), the upper bound (all predicted boxes), the same per phrase type."""

    recall: Mapping[int, float]
    upper_bound: float
    per_type: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    num_phrases: int = 0
    num_sentences: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"recall": {f"R@{k}": v for k, v in self.recall.items()}, "upper_bound": self.upper_bound,
                "per_type": {t: {f"R@{k}": v for k, v in r.items()} for t, r in self.per_type.items()},
                "num_phrases": self.num_phrases, "num_sentences": self.num_sentences}


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of xyxy boxes, area (x2 - x1) * (y2 - y1) (the official evaluator's)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _as_prediction(p: FlickrPrediction | Mapping, i: int) -> FlickrPrediction:
    if isinstance(p, FlickrPrediction):
        return p
    try:
        return FlickrPrediction(str(p["image_id"]), int(p["sentence_id"]), p["boxes"])
    except (KeyError, TypeError, ValueError):
        raise GlipError(f"predictions[{i}]: needs image_id, sentence_id and boxes (per phrase, ranked)") from None


def flickr_recall(ground_truth: FlickrGroundTruth, predictions: Sequence[FlickrPrediction | Mapping],
                  ks: Sequence[int] = DEFAULT_KS, iou_threshold: float = IOU_THRESHOLD) -> FlickrMetrics:
    """Recall@k of phrase grounding (see the module docstring)."""
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise GlipError(f"recall ranks must be whole numbers >= 1 (got {list(ks)})")
    expected = {(s.image_id, s.sentence_id): s for s in ground_truth.sentences}
    seen: set[tuple[str, int]] = set()
    hits: dict[str, dict[int | None, int]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, int] = defaultdict(int)
    for i, raw in enumerate(predictions):
        pred = _as_prediction(raw, i)
        key = (pred.image_id, pred.sentence_id)
        if key not in expected:
            if pred.image_id not in ground_truth.boxes:
                raise GlipError(f"predictions[{i}]: image {pred.image_id!r} is not in the {ground_truth.split} split")
            continue  # a sentence without any boxed phrase: not evaluated (as the official evaluator)
        if key in seen:
            raise GlipError(f"predictions[{i}]: a second prediction for sentence {pred.sentence_id} of image "
                            f"{pred.image_id}")
        seen.add(key)
        sentence = expected[key]
        if len(pred.boxes) != len(sentence.phrases):
            raise GlipError(f"predictions[{i}]: {len(pred.boxes)} phrase box lists for sentence {pred.sentence_id} of "
                            f"image {pred.image_id}, expected {len(sentence.phrases)}")
        for phrase, ranked in zip(sentence.phrases, pred.boxes):
            target = ground_truth.boxes[sentence.image_id][phrase.phrase_id]
            ranked = np.asarray(ranked, np.float64).reshape(-1, 4)
            best = box_iou_xyxy(ranked, target).max(axis=1) if len(ranked) else np.zeros(0)
            for group in ("all", *phrase.types):
                totals[group] += 1
                for k in (*ks, None):
                    top = best if k is None else best[:k]
                    if top.size and top.max() >= iou_threshold:
                        hits[group][k] += 1
    missing = [k for k in expected if k not in seen]
    if missing:
        img, sid = missing[0]
        raise GlipError(f"no prediction for {len(missing)} of {len(expected)} sentences "
                        f"(first: sentence {sid} of image {img})")
    n = totals["all"]
    if n == 0:
        raise GlipError("the ground truth holds no phrase with a box to evaluate")
    per_type = {g: {k: hits[g][k] / totals[g] for k in ks} for g in sorted(totals) if g != "all"}
    return FlickrMetrics({k: hits["all"][k] / n for k in ks}, hits["all"][None] / n, per_type, n, len(expected))
