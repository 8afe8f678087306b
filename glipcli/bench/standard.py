"""The paper's standard test sets: `glip bench coco`, `glip bench lvis`, `glip bench flickr30k`.

    from glipcli.bench.standard import run_coco, run_lvis, run_flickr30k
    report = run_coco("DATASET", model=BenchModel("glip-t"))     # report.metrics["AP"], report.paper["AP"]

Data (the official formats; `--data-root DIR`, or explicit `--ann` / `--images` / `--entities`):

- COCO val2017: `DIR/annotations/instances_val2017.json` + `DIR/val2017/` (also under `DIR/coco/`). The
  80 category names (id order, cleaned as the official evaluation does) are the prompt; box AP by
  pycocotools, boxes `w = x2 - x1 + 1`.
- LVIS v1 (`split` minival or val): `DIR/coco/annotations/lvis_v1_minival_inserted_image_name.json` (the
  file the official GLIP evaluation reads; also `lvis_v1_minival.json`) or `lvis_od_val.json` /
  `lvis_v1_val.json` (also under `DIR/annotations/` and `DIR/lvis/`); images under `DIR/coco/` (else
  `DIR/`) by `file_name`, or by the last two parts of `coco_url` (`val2017/000000397133.jpg`). The
  official protocol: 1203 class names in chunks of 40 (`TEST.CHUNKED_EVALUATION 40`), 300 detections
  per image, boxes `w = x2 - x1` (no +1), fixed AP (`glipcli.evaluation.lvis`: 10,000 detections per
  category over the set, no per-image limit), AP and APr / APc / APf.
- Flickr30K Entities (`split` val or test): the release's `val.txt` / `test.txt`, `Sentences/`,
  `Annotations/` in `DIR/flickr30k_entities/` (or `DIR/` itself) and the images `<id>.jpg` in
  `DIR/flickr30k-images/` (also `flickr30k_images/`, `images/`). Each sentence is one caption whose
  boxed phrases are grounded (`GLIPPredictor.ground`, top 10 boxes per phrase after per-phrase NMS);
  Recall@1/5/10 with the any-box protocol (`glipcli.evaluation.flickr`).

Resume: predictions are appended to `OUT/predictions.jsonl` as each image completes (its first line
names the run; another model or ground truth in the same folder is refused). A re-run predicts only
the images not in it, then scores everything; `OUT/result.json` and `OUT/result.md` are written
atomically. `max_images` evaluates the first N images only (a quick check: not comparable with the
paper, and said so in the result).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from rich.table import Table

from glipcli.bench import paper
from glipcli.bench.model import BenchModel, default_output
from glipcli.bench.paper import PaperValue
from glipcli.bench.session import BenchSession
from glipcli.bench.split_eval import detection_results
from glipcli.data.transforms import load_image
from glipcli.errors import GlipError
from glipcli.evaluation.coco import coco_box_ap, load_ground_truth
from glipcli.evaluation.detection import dataset_prompt_spec, image_paths, map_classes, require_evaluable
from glipcli.evaluation.flickr import FlickrGroundTruth, FlickrPrediction, flickr_recall
from glipcli.evaluation.lvis import LvisGroundTruth, lvis_box_ap
from glipcli.io import atomic_write, json_text
from glipcli.modeling.postprocess import ATSSPostProcessor
from glipcli.outputs import OutputGuard
from glipcli.prompts.prompt_file import PromptSpec

PREDICTIONS_FILE = "predictions.jsonl"
RESULT_FILES = ("result.json", "result.md")
LVIS_SPLITS = {"minival": "minival", "val": "val_v1"}  # ours -> the paper-number key
LVIS_CHUNK_SIZE = 40
LVIS_MAX_DETECTIONS = 300
FLICKR_TOP_K = 10


# -- the predictions log ------------------------------------------------------------------------------
class PredictionLog:
    """`OUT/predictions.jsonl`: a header line `{"run": identity}`, then one `{"key", "value"}` line per
    finished image. A damaged tail (an interrupted write) is cut off when the log is opened."""

    def __init__(self, path: str | Path, identity: Mapping[str, Any]):
        self.path = Path(path)

        # A folder with our predictions log is a benchmark run to continue (its header is checked
        # against `identity`); any other holding our file names is never written into.
        OutputGuard().run_folder(self.path.parent, (self.path.name, *RESULT_FILES), "--output",
                                 resume=self.path.is_file(), what="benchmark run")
        self.identity = json.loads(json.dumps(dict(identity), default=str))
        self.records: dict[str, Any] = {}
        if self.path.is_file():
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps({"run": self.identity}) + "\n",
                                                               encoding="utf-8"))

    def _read(self) -> None:
        raw = self.path.read_bytes()
        good = 0
        header = None
        for line in raw.split(b"\n")[:-1]:  # the part after the last newline is incomplete (or empty)
            try:
                item = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                break
            if header is None:
                if not isinstance(item, dict) or "run" not in item:
                    raise GlipError(f"{self.path}: not a glip predictions log; use another output folder")
                header = item["run"]
            else:
                if not isinstance(item, dict) or "key" not in item:
                    break
                self.records[str(item["key"])] = item.get("value")
            good += len(line) + 1
        if header is None:
            raise GlipError(f"{self.path}: damaged predictions log (no header); delete it or use another output folder")
        differ = sorted(k for k in set(header) | set(self.identity) if header.get(k) != self.identity.get(k))
        if differ:
            shown = ", ".join(f"{k}={header.get(k)!r} (now {self.identity.get(k)!r})" for k in differ)
            raise GlipError(f"{self.path.parent} holds predictions of a different run: {shown}; "
                            "use another output folder")
        if good != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def __contains__(self, key: object) -> bool:
        return str(key) in self.records

    def get(self, key: object) -> Any:
        return self.records[str(key)]

    def append(self, key: object, value: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json_text({"key": str(key), "value": value}, self.path) + "\n")
        self.records[str(key)] = value


def _pack(results: Sequence[Mapping]) -> list[list[float]]:
    """Detections of one image as [category_id, x, y, w, h, score] rows (boxes to 1e-3 px)."""
    return [[int(r["category_id"]), *(round(float(v), 3) for v in r["bbox"]), round(float(r["score"]), 6)]
            for r in results]


def _unpack(image_id: Any, rows: Sequence[Sequence[float]]) -> list[dict]:
    return [{"image_id": image_id, "category_id": int(r[0]), "bbox": [float(v) for v in r[1:5]], "score": float(r[5])}
            for r in rows]


# -- reports ----------------------------------------------------------------------------------------------
@dataclass
class StandardReport:
    """metrics: fractions (recalls for Flickr30K); paper: the published numbers (percent) by metric name."""

    benchmark: str
    model: str
    output: Path
    metrics: dict[str, float]
    paper: dict[str, PaperValue]
    paper_model: str | None
    images: int
    predicted: int
    reused: int
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    shown: tuple[str, ...] = ()

    def rows(self) -> list[tuple[str, str, str]]:
        """(metric, ours in percent, paper) for the metrics worth showing."""
        out = []
        for name in self.shown or tuple(self.metrics):
            value = self.metrics.get(name)
            ours = "-" if value is None or value < 0 else f"{100 * value:.1f}"
            pv = self.paper.get(name)
            out.append((name, ours, pv.format() if pv is not None else ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "model": self.model, "unit": "fractions (paper: percent)",
                "metrics": self.metrics,
                "paper_model": self.paper_model,
                "paper": {k: {"value": v.value, "std": v.std, "source": v.source} for k, v in self.paper.items()},
                "images": self.images, "predicted_now": self.predicted, "reused": self.reused, "notes": self.notes}

    def markdown(self) -> str:
        lines = [f"# {self.benchmark}", ""]
        lines += [f"Model: `{self.model}`", ""]
        lines += [f"{self.images} images. Numbers in percent.", ""]
        has_paper = any(p for _, _, p in self.rows())
        lines.append("| metric | ours |" + (" paper |" if has_paper else ""))
        lines.append("|---|---:|" + ("---:|" if has_paper else ""))
        for name, ours, pv in self.rows():
            lines.append(f"| {name} | {ours} |" + (f" {pv} |" if has_paper else ""))
        sources = sorted({v.source for v in self.paper.values()})
        if sources:
            lines += ["", "Paper numbers: " + "; ".join(sources) + "."]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def rich_table(self):
        table = Table(title=f"{self.benchmark} ({self.images} images)")
        has_paper = any(p for _, _, p in self.rows())
        for column in ("metric", "ours") + (("paper",) if has_paper else ()):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name, ours, pv in self.rows():
            table.add_row(name, ours, *((pv,) if has_paper else ()))
        return table


def _write_report(report: StandardReport, identity: Mapping[str, Any]) -> StandardReport:
    data = {**report.to_dict(), "run": dict(identity)}
    json_path, md_path = (report.output / name for name in RESULT_FILES)
    text = json_text(data, json_path, indent=2, default=str) + "\n"
    atomic_write(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    markdown = report.markdown()
    atomic_write(md_path, lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    report.files = [json_path, md_path, report.output / PREDICTIONS_FILE]
    return report


# -- shared ---------------------------------------------------------------------------------------------
def _first(candidates: Sequence[Path], check: Callable[[Path], bool]) -> Path | None:
    return next((c for c in candidates if check(c)), None)


def _limit(items: list, max_images: int | None) -> list:
    if max_images is None:
        return items
    if max_images < 1:
        raise GlipError(f"--max-images must be at least 1 (got {max_images})")
    return items[:max_images]


def _subset_note(max_images: int | None, total: int) -> list[str]:
    if max_images is None or max_images >= total:
        return []
    return [f"only the first {max_images} of {total} images were evaluated: not comparable with the paper"]


def _predict_detections(session: BenchSession, log: PredictionLog, paths: Sequence[Path], ids: Sequence[Any], spec,
                        category_ids: Sequence[int], plus_one: bool, batch_size: int,
                        chunk_size: int | None, label: str) -> int:
    todo = [i for i, image_id in enumerate(ids) if image_id not in log]
    if not todo:
        return 0
    if len(todo) < len(ids):
        session.say(f"{len(ids) - len(todo)} of {len(ids)} images already predicted in {log.path} (reused)")
    predictor = session.predictor()
    with session.progress_bar() as bar:
        task = bar.add_task(label, total=len(todo))
        detection_results(predictor, [paths[i] for i in todo], [ids[i] for i in todo], spec, category_ids,
                          plus_one=plus_one, batch_size=batch_size, chunk_size=chunk_size,
                          progress=lambda done, total: bar.update(task, completed=done),
                          on_image=lambda image_id, results: log.append(image_id, _pack(results)))
    return len(todo)


# -- COCO -------------------------------------------------------------------------------------------------
def find_coco(data_root: str | Path | None, ann_file: str | Path | None = None,
              images: str | Path | None = None) -> tuple[Path, Path]:
    """The val2017 instances file and image folder (see the module docstring)."""
    roots = [Path(data_root), Path(data_root) / "coco"] if data_root is not None else []
    ann = Path(ann_file) if ann_file is not None else _first(
        [r / "annotations" / "instances_val2017.json" for r in roots], Path.is_file)
    if ann is None or not ann.is_file():
        where = ann_file if ann_file is not None else " or ".join(
            str(r / "annotations" / "instances_val2017.json") for r in roots) or "(no --data-root given)"
        raise GlipError(f"COCO val2017 annotations not found: {where} (pass --data-root DIR or --ann FILE)")
    img = Path(images) if images is not None else _first(
        [r / "val2017" for r in roots] + [ann.parent.parent / "val2017"], Path.is_dir)
    if img is None or not img.is_dir():
        raise GlipError(f"COCO val2017 images not found: {images or ' or '.join(str(r / 'val2017') for r in roots)} "
                        "(pass --images DIR)")
    return ann, img


def run_coco(data_root: str | Path | None = None, *, ann_file: str | Path | None = None,
             images: str | Path | None = None, model: BenchModel | None = None, output: str | Path | None = None,
             batch_size: int = 1, max_images: int | None = None, console=None, progress: bool = False
             ) -> StandardReport:
    """Zero-shot COCO val2017 box AP (pycocotools), with the paper's number for an official preset."""
    model = model or BenchModel()
    session = BenchSession(model, console, progress)
    ann, img_dir = find_coco(data_root, ann_file, images)
    gt = load_ground_truth(ann)
    require_evaluable(gt, str(ann))
    spec = dataset_prompt_spec(gt, where=str(ann))
    mapping = map_classes(spec, gt, str(ann))
    all_images = gt["images"]
    chosen = _limit(all_images, max_images)
    paths = image_paths(chosen, img_dir, str(ann))
    ids = [im["id"] for im in chosen]
    out = Path(output) if output is not None else default_output("coco-val2017", model)
    identity = {"benchmark": "coco", **model.identity(), "ann_file": str(ann.resolve())}
    log = PredictionLog(out / PREDICTIONS_FILE, identity)
    predicted = _predict_detections(session, log, paths, ids, spec, mapping.category_ids, True, batch_size, None,
                                    "COCO val2017")
    results = [r for image_id in ids for r in _unpack(image_id, log.get(image_id))]
    metrics = coco_box_ap(gt, results, image_ids=ids)
    pv = paper.coco_box_ap(model.paper_model)
    report = StandardReport("COCO val2017 box AP (zero-shot)", model.label, out, dict(metrics.metrics),
                            {"AP": pv} if pv is not None else {}, model.paper_model, len(ids), predicted,
                            len(ids) - predicted, mapping.notes + _subset_note(max_images, len(all_images)),
                            shown=("AP", "AP50", "AP75", "APs", "APm", "APl"))
    return _write_report(report, identity)


# -- LVIS -------------------------------------------------------------------------------------------------
LVIS_FILES = {"minival": ("lvis_v1_minival_inserted_image_name.json", "lvis_v1_minival.json"),
              "val": ("lvis_od_val.json", "lvis_v1_val.json")}


def find_lvis(data_root: str | Path | None, split: str, ann_file: str | Path | None = None,
              images: str | Path | None = None) -> tuple[Path, Path]:
    if split not in LVIS_SPLITS:
        raise GlipError(f"LVIS split must be {' or '.join(LVIS_SPLITS)} (got {split!r})")
    root = Path(data_root) if data_root is not None else None
    folders = [root / "coco" / "annotations", root / "annotations", root / "lvis", root] if root is not None else []
    candidates = [f / name for f in folders for name in LVIS_FILES[split]]
    ann = Path(ann_file) if ann_file is not None else _first(candidates, Path.is_file)
    if ann is None or not ann.is_file():
        where = ann_file if ann_file is not None else " or ".join(map(str, candidates[:2])) or "(no --data-root given)"
        raise GlipError(f"LVIS {split} annotations not found: {where} (pass --data-root DIR or --ann FILE)")
    img = Path(images) if images is not None else _first(
        ([root / "coco", root] if root is not None else []) + [ann.parent.parent], Path.is_dir)
    if img is None or not img.is_dir():
        raise GlipError(f"LVIS images folder not found: {images} (pass --images DIR, the folder holding val2017/)")
    return ann, img


def lvis_file_name(image: Mapping) -> str:
    """An LVIS image's path relative to the COCO folder: `file_name`, else the end of `coco_url`."""
    if image.get("file_name"):
        return str(image["file_name"])
    url = image.get("coco_url")
    if not url:
        raise KeyError("file_name")
    parts = PurePosixPath(str(url).split("://", 1)[-1]).parts
    return "/".join(parts[-2:])


def _with_max_detections(predictor, max_detections: int) -> None:
    post = replace(predictor.cfg.postprocess, max_detections=max_detections)
    predictor.cfg = replace(predictor.cfg, postprocess=post)
    predictor.postprocessor = ATSSPostProcessor(post)


def run_lvis(data_root: str | Path | None = None, *, split: str = "minival", ann_file: str | Path | None = None,
             images: str | Path | None = None, model: BenchModel | None = None, output: str | Path | None = None,
             batch_size: int = 1, max_images: int | None = None, chunk_size: int = LVIS_CHUNK_SIZE,
             max_detections: int = LVIS_MAX_DETECTIONS, console=None, progress: bool = False) -> StandardReport:
    """Zero-shot LVIS fixed AP (official protocol, see the module docstring)."""

    if chunk_size < 1 or max_detections < 1:
        raise GlipError("--chunk-size and --max-detections must be at least 1")
    model = model or BenchModel()
    session = BenchSession(model, console, progress, configure=lambda p: _with_max_detections(p, max_detections))
    ann, img_dir = find_lvis(data_root, split, ann_file, images)
    try:
        data = json.loads(ann.read_text(encoding="utf-8"))
        categories = sorted(data["categories"], key=lambda c: c["id"])
        all_images = list(data["images"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise GlipError(f"{ann}: not a readable LVIS annotation file ({str(exc).splitlines()[0][:160]})") from None
    chosen = _limit(all_images, max_images)
    if len(chosen) < len(all_images):
        keep = {im["id"] for im in chosen}
        data = {**data, "images": chosen, "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    gt = LvisGroundTruth.load(data)
    spec = PromptSpec.from_names([str(c["name"]) for c in categories], clean_names=True)
    category_ids = [int(c["id"]) for c in categories]
    paths = image_paths(chosen, img_dir, str(ann), name_of=lvis_file_name)
    ids = [im["id"] for im in chosen]
    out = Path(output) if output is not None else default_output(f"lvis-{split}", model)
    identity = {"benchmark": f"lvis {split}", **model.identity(), "ann_file": str(ann.resolve()),
                "chunk_size": chunk_size, "max_detections": max_detections}
    log = PredictionLog(out / PREDICTIONS_FILE, identity)
    predicted = _predict_detections(session, log, paths, ids, spec, category_ids, False, batch_size, chunk_size,
                                    f"LVIS {split}")
    results = [r for image_id in ids for r in _unpack(image_id, log.get(image_id))]
    metrics = lvis_box_ap(gt, results)
    published = paper.lvis_fixed_ap(model.paper_model, LVIS_SPLITS[split]) or {}
    report = StandardReport(f"LVIS {split} fixed AP (zero-shot)", model.label, out, dict(metrics.metrics),
                            dict(published),
                            model.paper_model, len(ids), predicted, len(ids) - predicted,
                            _subset_note(max_images, len(all_images)),
                            shown=("AP", "APr", "APc", "APf", "AP50", "AP75", "APs", "APm", "APl"))
    return _write_report(report, identity)


# -- Flickr30K Entities -------------------------------------------------------------------------------------
def find_flickr(data_root: str | Path | None, split: str, entities: str | Path | None = None,
                images: str | Path | None = None) -> tuple[Path, Path]:
    root = Path(data_root) if data_root is not None else None
    candidates = [root / "flickr30k_entities", root / "flickr30k" / "flickr30k_entities", root] if root else []
    ent = Path(entities) if entities is not None else _first(candidates, lambda p: (p / f"{split}.txt").is_file())
    if ent is None or not (ent / f"{split}.txt").is_file():
        where = entities if entities is not None else " or ".join(str(c / f"{split}.txt") for c in candidates[:2])
        raise GlipError(f"Flickr30K Entities {split} split not found: {where or '(no --data-root given)'} "
                        "(pass --data-root DIR or --entities DIR, the release with Sentences/ and Annotations/)")
    names = ("flickr30k-images", "flickr30k_images", "images")
    img_roots = ([root / n for n in names] + [root / "flickr30k" / n for n in names] if root else []) + \
        [ent.parent / n for n in names]
    img = Path(images) if images is not None else _first(img_roots, Path.is_dir)
    if img is None or not img.is_dir():
        raise GlipError(f"Flickr30K images not found: {images or ' or '.join(str(p) for p in img_roots[:2])} "
                        "(pass --images DIR, the folder of <image id>.jpg)")
    return ent, img


def ground_image(predictor, path: Path, sentences: Sequence, top_k: int) -> list[list[list[list[float]]]]:
    """Per sentence of one image, per phrase, its ranked boxes (xyxy, best first)."""

    image = load_image(path)
    out = []
    for sentence in sentences:
        encoded = predictor.encode_grounding(sentence.caption, [tuple(p.span) for p in sentence.phrases], markup=False)
        (result,) = predictor.ground(image, encoded, top_k=top_k, box_threshold=0.0)
        by_span = {tuple(p.span): [b.box_xyxy for b in p.boxes] for p in result.phrases}
        out.append([by_span.get(tuple(p.span), []) for p in sentence.phrases])
    return out


def run_flickr30k(data_root: str | Path | None = None, *, split: str = "val", entities: str | Path | None = None,
                  images: str | Path | None = None, model: BenchModel | None = None, output: str | Path | None = None,
                  max_images: int | None = None, merge_boxes: bool = False, top_k: int = FLICKR_TOP_K,
                  console=None, progress: bool = False) -> StandardReport:
    """Flickr30K Entities phrase grounding Recall@1/5/10 (any-box protocol; `merge_boxes`: merged-box)."""

    if split not in ("val", "test"):
        raise GlipError(f"Flickr30K split must be val or test (got {split!r})")
    if top_k < 10:
        raise GlipError(f"--top-k must be at least 10 for Recall@10 (got {top_k})")
    model = model or BenchModel()
    session = BenchSession(model, console, progress)
    ent, img_dir = find_flickr(data_root, split, entities, images)
    listing = [line.strip() for line in (ent / f"{split}.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    chosen = _limit(listing, max_images)
    gt = FlickrGroundTruth.load(ent, split, merge_boxes=merge_boxes,
                                image_ids=chosen if len(chosen) < len(listing) else None)
    per_image: dict[str, list] = {}
    for s in gt.sentences:
        per_image.setdefault(s.image_id, []).append(s)
    todo_ids = [i for i in gt.image_ids if i in per_image]
    paths = image_paths([{"id": i, "file_name": f"{i}.jpg"} for i in todo_ids], img_dir, str(ent / f"{split}.txt"))
    out = Path(output) if output is not None else default_output(f"flickr30k-{split}", model)
    identity = {"benchmark": f"flickr30k {split}", **model.identity(), "entities": str(ent.resolve()),
                "top_k": top_k}
    log = PredictionLog(out / PREDICTIONS_FILE, identity)
    todo = [(i, p) for i, p in zip(todo_ids, paths) if i not in log]
    if todo and len(todo) < len(todo_ids):
        session.say(f"{len(todo_ids) - len(todo)} of {len(todo_ids)} images already grounded in {log.path} (reused)")
    if todo:
        predictor = session.predictor()
        with session.progress_bar() as bar:
            task = bar.add_task(f"Flickr30K {split}", total=len(todo))
            for n, (image_id, path) in enumerate(todo, 1):
                boxes = ground_image(predictor, path, per_image[image_id], top_k)
                log.append(image_id, [[[[round(float(v), 3) for v in box] for box in phrase] for phrase in sentence]
                                      for sentence in boxes])
                bar.update(task, completed=n)
    predictions = []
    for image_id in todo_ids:
        stored = log.get(image_id)
        sentences = per_image[image_id]
        if len(stored) != len(sentences):
            raise GlipError(f"{log.path}: image {image_id} has {len(stored)} grounded sentences, expected "
                            f"{len(sentences)}; delete the file to ground again")
        predictions += [FlickrPrediction(image_id, s.sentence_id, b) for s, b in zip(sentences, stored)]
    metrics = flickr_recall(gt, predictions)
    values = {f"R@{k}": v for k, v in metrics.recall.items()}
    values["upper bound"] = metrics.upper_bound
    published = paper.flickr_recall(model.paper_model, split) or {}
    report = StandardReport(f"Flickr30K Entities {split} phrase grounding", model.label, out, values,
                            {f"R@{k}": v for k, v in published.items()}, model.paper_model, len(todo_ids),
                            len(todo), len(todo_ids) - len(todo),
                            _subset_note(max_images, len(listing))
                            + [f"{metrics.num_phrases} phrases in {metrics.num_sentences} sentences"
                               + (" (merged-box protocol)" if merge_boxes else " (any-box protocol)")],
                            shown=("R@1", "R@5", "R@10", "upper bound"))
    return _write_report(report, identity)
