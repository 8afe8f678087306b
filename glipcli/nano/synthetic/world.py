"""`SyntheticWorld`: samples annotated scenes of coloured shapes, deterministically by seed.

A scene is drawn object by object on a background; later objects may partially cover earlier
ones (occlusion), but every object keeps at least `WorldConfig.min_visible` of its own area
visible. Boxes are of the **visible extent**: the tight box around the pixels the object still
owns in the final image (coverage >= 0.5 and not covered by a later object), as COCO annotators
box what they see; `SceneObject.full_box` is the box of the whole shape. Areas are visible pixel
counts. Boxes are COCO `[x, y, w, h]` in pixels: an object owning pixel columns x0..x1 and rows
y0..y1 (inclusive) has the box `[x0, y0, x1 - x0 + 1, y1 - y0 + 1]`.

Scene `i` of a stream depends only on (seed, rules name, stream name, i): scenes can be made in
any order, and the train/valid/test streams never share a scene. (Pixels are reproducible for
given numpy and Pillow versions; the dataset manifest records both.)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, fields
from typing import Sequence

import numpy as np
from PIL import Image

from glipcli.nano.synthetic.captions import Caption, scene_captions
from glipcli.nano.synthetic.render import (ASPECT_RANGE, BACKGROUNDS, ROTATION_RANGE, draw_clutter, pattern_fill,
                                           render_background, shape_coverage)
from glipcli.nano.synthetic.tasks import SceneRules, task_rules
from glipcli.nano.synthetic.vocabulary import (CLASSIC_SHAPES, COLOURS, PATTERNS, SHAPES, SIZES, HeldOut, Wording,
                                               check_colour, check_shape)
from glipcli.errors import GlipError

_PLACEMENT_TRIES = 40
_SCENE_TRIES = 8


@dataclass(frozen=True)
class WorldConfig:
    """Scene statistics.

    size_range: image width and height are each drawn from this range (pixels, inclusive).
    objects_range: objects per image (inclusive); fewer when no placement keeps them visible.
    small_radius, large_radius: object radius as a fraction of the image's shorter side, per
    size class (the gap between them keeps "small" and "large" unambiguous).
    pattern_probability: chance an object is striped or dotted (else plain).
    min_visible: the least fraction of its own area each object keeps visible.
    backgrounds: background kinds to draw from. supersample: anti-aliasing factor.
    pretrain_shapes: the shapes the `pretrain` and `all` tasks draw (the evaluation tasks draw the
    classic ones). clutter: chance a scene's background gets unannotated strokes and specks.

    The defaults are the second edition (`WORLD_EDITIONS`); the first had the classic shapes and
    no clutter.
    """

    size_range: tuple[int, int] = (224, 288)
    objects_range: tuple[int, int] = (2, 6)
    small_radius: tuple[float, float] = (0.06, 0.09)
    large_radius: tuple[float, float] = (0.13, 0.19)
    pattern_probability: float = 0.35
    min_visible: float = 0.6
    backgrounds: tuple[str, ...] = BACKGROUNDS
    supersample: int = 3
    pretrain_shapes: tuple[str, ...] = SHAPES
    clutter: float = 0.5

    @classmethod
    def from_record(cls, record: dict) -> "WorldConfig":
        """The config `dataclasses.asdict` recorded (run.json, synthetic.json); fields a first-edition
        record lacks take the first edition's values."""
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in known}
        values.setdefault("pretrain_shapes", CLASSIC_SHAPES)
        values.setdefault("clutter", 0.0)
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise GlipError(f"damaged world settings in the run record ({error})") from None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pretrain_shapes", tuple(self.pretrain_shapes))
        for shape in self.pretrain_shapes:
            check_shape(shape)
        if not self.pretrain_shapes:
            raise GlipError("the world draws no shape (pretrain_shapes is empty)")
        if not 0.0 <= self.clutter <= 1.0:
            raise GlipError(f"clutter probability {self.clutter} is outside [0, 1]")
        lo, hi = self.size_range
        if not 32 <= lo <= hi <= 4096:
            raise GlipError(f"image size range {lo}-{hi} must satisfy 32 <= min <= max <= 4096")
        omin, omax = self.objects_range
        if not 1 <= omin <= omax <= 20:
            raise GlipError(f"objects per image {omin}-{omax} must satisfy 1 <= min <= max <= 20")
        for name, (a, b) in (("small", self.small_radius), ("large", self.large_radius)):
            if not 0.0 < a <= b <= 0.45:
                raise GlipError(f"{name} radius range {a}-{b} must satisfy 0 < min <= max <= 0.45")
        if self.small_radius[1] >= self.large_radius[0]:
            raise GlipError("small objects must be smaller than large ones (small max < large min)")
        if not 0.0 <= self.pattern_probability <= 1.0:
            raise GlipError(f"pattern probability {self.pattern_probability} is outside [0, 1]")
        if not 0.0 < self.min_visible <= 1.0:
            raise GlipError(f"min_visible {self.min_visible} is outside (0, 1]")
        for kind in self.backgrounds:
            if kind not in BACKGROUNDS:
                raise GlipError(f"unknown background {kind!r}; choose from: {', '.join(BACKGROUNDS)}")
        if not self.backgrounds:
            raise GlipError("no background kinds given")


# The worlds nano was pre-trained on, by edition. `glip bench synthetic` generates its held-out data
# from the first: the classic shapes without clutter, the same data for every edition's model.
WORLD_EDITIONS: dict[int, WorldConfig] = {
    1: WorldConfig(pretrain_shapes=CLASSIC_SHAPES, clutter=0.0),
    2: WorldConfig(),
}


@dataclass(frozen=True)
class ObjectSpec:
    """An object to place by hand (`SyntheticWorld.compose`). x, y: centre as fractions of the
    image width and height; radius: pixels (None: the middle of the size class)."""

    shape: str
    colour: str
    size: str = "large"
    pattern: str | None = None
    x: float = 0.5
    y: float = 0.5
    rotation: float = 0.0
    radius: float | None = None
    aspect: float | None = None


@dataclass(frozen=True)
class SceneObject:
    """One drawn object. box / full_box: COCO xywh of the visible extent / the whole shape;
    area / full_area: visible / whole pixel counts; rgb: the colour actually painted; aspect:
    length / width of a shape whose proportions vary (None for the others)."""

    shape: str
    colour: str
    size: str
    pattern: str | None
    centre: tuple[float, float]
    radius: float
    rotation: float
    rgb: tuple[int, int, int]
    box: tuple[int, int, int, int]
    full_box: tuple[int, int, int, int]
    area: int
    full_area: int
    aspect: float | None = None

    @property
    def visible_fraction(self) -> float:
        return self.area / self.full_area if self.full_area else 0.0


@dataclass(frozen=True)
class Scene:
    """An image and its objects (in drawing order: later ones are on top).

    image: uint8 [H, W, 3] RGB. owner: int16 [H, W], the index of the object each pixel belongs
    to, -1 for background. background / background_rgb: the background kind and base colour.
    rules, stream, index: where the scene comes from (they seed its captions)."""

    index: int
    width: int
    height: int
    image: np.ndarray
    owner: np.ndarray
    objects: tuple[SceneObject, ...]
    background: str
    background_rgb: tuple[int, int, int]
    rules: str = "compose"
    stream: str = "compose"

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.image, mode="RGB")


def _key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return (0, 0, 0, 0)
    return (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))


@dataclass
class _Canvas:
    """A scene being drawn: float image, pixel owners, the objects placed so far (dicts with a
    running `visible` pixel count) and the background."""

    image: np.ndarray
    owner: np.ndarray
    background: str
    background_rgb: tuple[int, int, int]
    placed: list[dict] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]


class SyntheticWorld:
    """Procedural grounding world. `scene(i, rules, stream)` is a pure function of the seed and
    its arguments; so are `captions(scene)`.

    held_out: what the `pretrain` task never shows (see `HeldOut`)."""

    def __init__(self, seed: int = 0, config: WorldConfig | None = None, held_out: HeldOut | None = None):
        self.seed = int(seed)
        self.config = config or WorldConfig()
        self.held_out = held_out if held_out is not None else HeldOut()

    # -- randomness --------------------------------------------------------------------------
    def _rng(self, purpose: str, rules: str, stream: str, index: int) -> np.random.Generator:
        if index < 0:
            raise GlipError(f"scene index must be >= 0, got {index}")
        entropy = [self.seed & 0xFFFFFFFF, self.seed >> 32, _key(purpose), _key(rules), _key(stream), index]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def rules(self, task: str | SceneRules) -> SceneRules:
        """Scene rules by task name (`pretrain`, `unseen-combos`, `novel-shape`, `all`)."""
        return task if isinstance(task, SceneRules) else task_rules(task, self.held_out, self.config.pretrain_shapes)

    # -- sampling ----------------------------------------------------------------------------
    def scene(self, index: int, rules: str | SceneRules = "pretrain", stream: str = "train") -> Scene:
        """Scene `index` of `stream` under `rules` (a task name or `SceneRules`). With focus
        combinations, a scene whose focus objects all failed to fit is drawn again (seeded)."""
        rules = self.rules(rules)
        for attempt in range(_SCENE_TRIES):
            purpose = "scene" if attempt == 0 else f"scene/retry{attempt}"
            scene = self._sample_scene(self._rng(purpose, rules.name, stream, index), rules, index, stream)
            if not rules.focus_combos or any((o.colour, o.shape) in rules.focus_combos for o in scene.objects):
                return scene
        raise GlipError(f"could not place a {rules.name} focus object in scene {index} of {stream} "
                        f"after {_SCENE_TRIES} tries (images too small for the objects?)")

    def _sample_scene(self, rng: np.random.Generator, rules: SceneRules, index: int, stream: str) -> Scene:
        cfg = self.config
        width, height = (int(v) for v in rng.integers(cfg.size_range[0], cfg.size_range[1] + 1, size=2))
        combos = self._sample_combos(rules, rng)
        specs = [self._sample_attributes(colour, shape, rng) for colour, shape in combos]
        canvas = self._start(width, height, [c for c, _ in combos], rng, clutter=True)
        side = min(width, height)
        for colour, shape, size, pattern, rotation, aspect in specs:
            lo, hi = cfg.small_radius if size == "small" else cfg.large_radius
            radius = float(rng.uniform(lo, hi)) * side
            for _ in range(_PLACEMENT_TRIES):
                margin = radius * 1.2 + 1.0
                if width <= 2 * margin or height <= 2 * margin:
                    break
                cx = float(rng.uniform(margin, width - margin))
                cy = float(rng.uniform(margin, height - margin))
                if self._place(canvas, shape, colour, size, pattern, cx, cy, radius, rotation, rng,
                               min_visible=cfg.min_visible, aspect=aspect):
                    break
        return self._finish(canvas, index, rules.name, stream)

    def _sample_combos(self, rules: SceneRules, rng: np.random.Generator) -> list[tuple[str, str]]:
        lo, hi = self.config.objects_range
        n = int(rng.integers(lo, hi + 1))
        if not rules.focus_combos:
            pool = rules.combos()
            return [pool[i] for i in rng.integers(0, len(pool), size=n)]
        focus = sorted(rules.focus_combos, key=lambda c: (c[1], c[0]))
        k = int(rng.integers(1, min(rules.focus_max, n) + 1))
        others = rules.background_combos()
        picked = [focus[i] for i in rng.integers(0, len(focus), size=k)]
        picked += [others[i] for i in rng.integers(0, len(others), size=n - k)]
        order = rng.permutation(n)
        return [picked[i] for i in order]

    def _sample_attributes(self, colour: str, shape: str, rng: np.random.Generator
                           ) -> tuple[str, str, str, str | None, float, float | None]:
        size = SIZES[int(rng.integers(0, len(SIZES)))]
        pattern = None
        if rng.random() < self.config.pattern_probability:
            pattern = PATTERNS[int(rng.integers(0, len(PATTERNS)))]
        limit = ROTATION_RANGE[shape]
        rotation = float(rng.uniform(-limit, limit)) if limit else 0.0
        if shape == "arrow":
            rotation += 90.0 * int(rng.integers(0, 4))
        aspect = None
        if shape in ASPECT_RANGE:  # drawn only for these shapes: classic scenes keep their random stream
            aspect = float(rng.uniform(*ASPECT_RANGE[shape]))
        return colour, shape, size, pattern, rotation, aspect

    def compose(self, objects: Sequence[ObjectSpec], width: int = 320, height: int = 240,
                background: str = "gradient", index: int = 0) -> Scene:
        """A scene with objects placed by hand (drawn in the given order; no visibility rule)."""
        if not objects:
            raise GlipError("compose needs at least one object")
        if background not in BACKGROUNDS:
            raise GlipError(f"unknown background {background!r}; choose one of: {', '.join(BACKGROUNDS)}")
        rng = self._rng("compose", background, f"{width}x{height}", index)
        for spec in objects:
            check_shape(spec.shape)
            check_colour(spec.colour)
            if spec.size not in SIZES:
                raise GlipError(f"unknown size {spec.size!r}; choose one of: {', '.join(SIZES)}")
            if spec.pattern is not None and spec.pattern not in PATTERNS:
                raise GlipError(f"unknown pattern {spec.pattern!r}; choose one of: {', '.join(PATTERNS)}")
        canvas = self._start(width, height, [s.colour for s in objects], rng, background=background)
        side = min(width, height)
        for spec in objects:
            lo, hi = self.config.small_radius if spec.size == "small" else self.config.large_radius
            radius = spec.radius if spec.radius is not None else (lo + hi) / 2.0 * side
            if not self._place(canvas, spec.shape, spec.colour, spec.size, spec.pattern, spec.x * width,
                               spec.y * height, radius, spec.rotation, rng, min_visible=0.0, aspect=spec.aspect):
                raise GlipError(f"{spec.colour} {spec.shape} at ({spec.x}, {spec.y}) does not fit inside "
                                f"the {width}x{height} image")
        return self._finish(canvas, index, "compose", "compose")

    # -- drawing -----------------------------------------------------------------------------
    def _start(self, width: int, height: int, colours: list[str], rng: np.random.Generator,
               background: str | None = None, clutter: bool = False) -> _Canvas:
        kind = background or self.config.backgrounds[int(rng.integers(0, len(self.config.backgrounds)))]
        base = _contrasting_base([COLOURS[c] for c in colours], rng)
        image = render_background(kind, height, width, base, rng)
        # Drawn only when the config asks for it: a first-edition scene keeps its random stream.
        if clutter and self.config.clutter > 0 and rng.random() < self.config.clutter:
            draw_clutter(image, base, rng)
        owner = np.full((height, width), -1, dtype=np.int16)
        return _Canvas(image=image, owner=owner, background=kind,
                       background_rgb=tuple(int(round(v)) for v in base))

    def _place(self, canvas: _Canvas, shape: str, colour: str, size: str, pattern: str | None,
               cx: float, cy: float, radius: float, rotation: float, rng: np.random.Generator,
               min_visible: float, aspect: float | None = None) -> bool:
        cov = shape_coverage(shape, cx, cy, radius, rotation, self.config.supersample, aspect=aspect)
        h, w = cov.alpha.shape
        x0, y0 = max(cov.x0, 0), max(cov.y0, 0)
        x1, y1 = min(cov.x0 + w, canvas.width), min(cov.y0 + h, canvas.height)
        if x1 <= x0 or y1 <= y0:
            return False
        alpha = cov.alpha[y0 - cov.y0:y1 - cov.y0, x0 - cov.x0:x1 - cov.x0]
        if float(cov.alpha.sum()) - float(alpha.sum()) > 1e-3:  # part of the shape is off the image
            return False
        mask = alpha >= 0.5
        full_area = int(mask.sum())
        if full_area == 0:
            return False
        objects = canvas.placed
        region = canvas.owner[y0:y1, x0:x1]
        covered = np.bincount(region[mask].astype(np.int64) + 1, minlength=len(objects) + 1)[1:]
        for obj, lost in zip(objects, covered):
            if lost and (obj["visible"] - lost) < min_visible * obj["full_area"]:
                return False
        # Accept: paint, then update owners and visible counts.
        rgb = np.clip(np.array(COLOURS[colour], np.float32) + rng.normal(0.0, 6.0, size=3), 0, 255)
        fill = pattern_fill(y1 - y0, x1 - x0, rgb, pattern, period=max(radius / 2.2, 4.0), rng=rng)
        patch = canvas.image[y0:y1, x0:x1]
        patch[:] = alpha[..., None] * fill + (1.0 - alpha[..., None]) * patch
        for obj, lost in zip(objects, covered):
            obj["visible"] -= int(lost)
        region[mask] = len(objects)
        full = np.zeros((canvas.height, canvas.width), dtype=bool)
        full[y0:y1, x0:x1] = mask
        canvas.placed.append({
            "shape": shape, "colour": colour, "size": size, "pattern": pattern, "centre": (cx, cy),
            "radius": radius, "rotation": rotation, "rgb": tuple(int(round(v)) for v in rgb), "aspect": aspect,
            "full_box": _box_of(full), "full_area": full_area, "visible": full_area,
        })
        return True

    def _finish(self, canvas: _Canvas, index: int, rules: str, stream: str) -> Scene:
        objects = []
        for i, obj in enumerate(canvas.placed):
            visible = canvas.owner == i
            objects.append(SceneObject(
                shape=obj["shape"], colour=obj["colour"], size=obj["size"], pattern=obj["pattern"],
                centre=obj["centre"], radius=obj["radius"], rotation=obj["rotation"], rgb=obj["rgb"],
                box=_box_of(visible), full_box=obj["full_box"], area=int(visible.sum()),
                full_area=obj["full_area"], aspect=obj["aspect"]))
        image = np.clip(np.rint(canvas.image), 0, 255).astype(np.uint8)
        return Scene(index=index, width=canvas.width, height=canvas.height, image=image, owner=canvas.owner,
                     objects=tuple(objects), background=canvas.background, background_rgb=canvas.background_rgb,
                     rules=rules, stream=stream)

    # -- language ----------------------------------------------------------------------------
    def captions(self, scene: Scene, n: int = 2, wording: Wording = "plain") -> list[Caption]:
        """`n` captions of `scene` with grounded phrase spans (deterministic per scene)."""
        rng = self._rng(f"captions/{wording}", scene.rules, scene.stream, scene.index)
        return scene_captions(scene, rng, n, wording)


def _contrasting_base(colours: list[tuple[int, int, int]], rng: np.random.Generator,
                      candidates: int = 32) -> np.ndarray:
    """A background base colour far (in RGB) from every object colour of the scene."""
    options = rng.uniform(40.0, 215.0, size=(candidates, 3))
    if not colours:
        return options[0]
    palette = np.array(colours, dtype=np.float64)
    distance = np.sqrt(((options[:, None, :] - palette[None, :, :]) ** 2).sum(-1)).min(axis=1)
    return options[int(np.argmax(distance))]

