"""Rasterising the synthetic world: shape coverage masks, fill patterns and backgrounds.

Shapes are drawn anti-aliased: each is rasterised `supersample` times larger with PIL and
box-filtered down, giving a coverage value in [0, 1] per pixel. A pixel *belongs* to a shape
where its coverage is at least 0.5 (that is what boxes and areas are measured on).

Shape geometry is given in unit coordinates: centre (0, 0), the shape fits the unit circle
(its extent along each axis is at most 1 from the centre), y pointing down as in images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from glipcli.errors import GlipError
from glipcli.nano.synthetic.vocabulary import EXTRA_SHAPES

BACKGROUNDS: tuple[str, ...] = ("solid", "gradient", "noise", "checker", "waves")

# Allowed rotation (degrees) per shape: small tilts keep e.g. a square from turning into a
# diamond or a cross into an "x"; symmetric shapes may turn freely within their symmetry.
ROTATION_RANGE: dict[str, float] = {
    "circle": 0.0, "ring": 0.0, "square": 15.0, "diamond": 10.0, "triangle": 15.0, "star": 20.0,
    "cross": 15.0, "hexagon": 30.0, "heart": 15.0, "arrow": 10.0,
    "bar": 90.0, "ellipse": 90.0, "crescent": 180.0, "bolt": 180.0, "dumbbell": 90.0, "pentagon": 36.0,
    "semicircle": 180.0, "trapezoid": 15.0,
}
RING_INNER = 0.55  # inner radius of a ring, relative to the outer one

# Length / width ratio drawn per object for the shapes whose proportions vary (the others keep one).
ASPECT_RANGE: dict[str, tuple[float, float]] = {
    "bar": (2.5, 6.0), "ellipse": (1.4, 2.6), "dumbbell": (2.2, 3.4), "bolt": (1.8, 2.8),
}


def _regular(n: int, radius: float, start_deg: float) -> np.ndarray:
    angles = np.deg2rad(start_deg + np.arange(n) * 360.0 / n)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    outer = _regular(5, 1.0, -90.0)
    inner = _regular(5, 0.42, -90.0 + 36.0)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


def _cross(half_width: float = 0.3) -> np.ndarray:
    w = half_width
    return np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                     (-w, w), (-1, w), (-1, -w), (-w, -w)], dtype=np.float64)


def _heart(points: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, points, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2.0
    return pts / np.abs(pts).max()


def _arrow() -> np.ndarray:
    return np.array([(-1.0, -0.22), (0.15, -0.22), (0.15, -0.62), (1.0, 0.0), (0.15, 0.62),
                     (0.15, 0.22), (-1.0, 0.22)], dtype=np.float64)


_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)], dtype=np.float64),
    "diamond": np.array([(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)], dtype=np.float64),
    "triangle": _regular(3, 1.0, -90.0) + np.array([0.0, 0.25]),  # centred on its box
    "star": _star() + np.array([0.0, 0.095]),
    "cross": _cross(),
    "hexagon": _regular(6, 1.0, 0.0),
    "heart": _heart(),
    "arrow": _arrow(),
}


def _bar(aspect: float) -> np.ndarray:
    w = 1.0 / aspect
    return np.array([(-1.0, -w), (1.0, -w), (1.0, w), (-1.0, w)], dtype=np.float64)


def _ellipse(aspect: float, points: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, points, endpoint=False)
    return np.stack([np.cos(t), np.sin(t) / aspect], axis=1)


def _bolt(aspect: float) -> np.ndarray:
    """A lightning flash along x: two slanted strokes joined by a step (concave on both sides)."""
    h = 1.0 / aspect
    return np.array([(-1.0, -0.35 * h), (0.05, -h), (-0.05, -0.15 * h), (1.0, 0.35 * h), (-0.05, h),
                     (0.05, 0.15 * h)], dtype=np.float64)


def _semicircle(points: int = 33) -> np.ndarray:
    t = np.linspace(math.pi, 2.0 * math.pi, points)
    return np.stack([np.cos(t), np.sin(t) + 0.5], axis=1)  # flat side down, centred on its box


_TRAPEZOID = np.array([(-0.5, -0.55), (0.5, -0.55), (1.0, 0.55), (-1.0, 0.55)], dtype=np.float64)


def _primitives(shape: str, rotation: float, aspect: float | None) -> list[tuple[str, np.ndarray, int]]:
    """The second edition's shapes as filled primitives in unit coordinates, rotated:
    ("polygon", points [n, 2], fill) or ("disc", [[cx, cy, r]], fill); fill 0 cuts a hole."""
    if aspect is None:
        lo, hi = ASPECT_RANGE.get(shape, (1.0, 1.0))
        aspect = (lo + hi) / 2.0
    if shape == "bar":
        return [("polygon", _rotate(_bar(aspect), rotation), 255)]
    if shape == "ellipse":
        return [("polygon", _rotate(_ellipse(aspect), rotation), 255)]
    if shape == "bolt":
        return [("polygon", _rotate(_bolt(aspect), rotation), 255)]
    if shape == "pentagon":
        return [("polygon", _rotate(_regular(5, 1.0, -90.0) + np.array([0.0, 0.095]), rotation), 255)]
    if shape == "semicircle":
        return [("polygon", _rotate(_semicircle(), rotation), 255)]
    if shape == "trapezoid":
        return [("polygon", _rotate(_TRAPEZOID, rotation), 255)]
    if shape == "crescent":
        bite = _rotate(np.array([[0.45, 0.0]]), rotation)[0]
        return [("disc", np.array([[0.0, 0.0, 1.0]]), 255), ("disc", np.array([[bite[0], bite[1], 0.82]]), 0)]
    if shape == "dumbbell":
        end = 1.0 - 0.55 * 2.0 / aspect  # ball radius 0.55 x the height budget 2 / aspect
        ball = 2.0 / aspect * 0.55
        handle = np.array([(-end, -ball * 0.35), (end, -ball * 0.35), (end, ball * 0.35), (-end, ball * 0.35)])
        centres = _rotate(np.array([(-end, 0.0), (end, 0.0)]), rotation)
        return [("polygon", _rotate(handle, rotation), 255)] + [
            ("disc", np.array([[cx, cy, ball]]), 255) for cx, cy in centres]
    raise GlipError(f"unknown shape {shape!r}")


def _primitive_bounds(primitives: list[tuple[str, np.ndarray, int]]) -> np.ndarray:
    """Corner points [n, 2] whose bounding box holds every filled primitive."""
    corners = []
    for kind, data, fill in primitives:
        if fill == 0:
            continue
        if kind == "polygon":
            corners.append(data)
        else:
            cx, cy, r = data[0]
            corners.append(np.array([(cx - r, cy - r), (cx + r, cy + r)]))
    return np.concatenate(corners)


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rot.T


@dataclass(frozen=True)
class Coverage:
    """A shape's anti-aliased coverage on a patch of the image.

    alpha: float32 [h, w] in [0, 1]; (x0, y0): the patch's top-left pixel in the image
    (the patch may reach beyond the image: callers clip)."""

    alpha: np.ndarray
    x0: int
    y0: int


def shape_coverage(shape: str, cx: float, cy: float, radius: float, rotation: float = 0.0,
                   supersample: int = 3, aspect: float | None = None) -> Coverage:
    """Rasterise `shape` centred at pixel coordinates (cx, cy) (pixel centres at integer + 0.5)
    with the given radius in pixels and rotation in degrees (clockwise on screen). aspect: the
    length / width ratio of the shapes in `ASPECT_RANGE` (None: the middle of its range)."""
    if radius <= 0:
        raise GlipError(f"shape radius must be positive, got {radius}")
    primitives = None
    if shape in EXTRA_SHAPES:
        primitives = _primitives(shape, rotation, aspect)
        points = _primitive_bounds(primitives)
    elif shape in ("circle", "ring"):
        points = np.array([(-1.0, -1.0), (1.0, 1.0)])
    elif shape in _POLYGONS:
        points = _rotate(_POLYGONS[shape], rotation)
    else:
        raise GlipError(f"unknown shape {shape!r}")
    points = points * radius + np.array([cx, cy])
    x0 = int(math.floor(points[:, 0].min())) - 1
    y0 = int(math.floor(points[:, 1].min())) - 1
    w = int(math.ceil(points[:, 0].max())) + 1 - x0
    h = int(math.ceil(points[:, 1].max())) + 1 - y0
    s = supersample
    canvas = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(canvas)
    local = (points - np.array([x0, y0])) * s  # supersampled patch coordinates
    if primitives is not None:
        origin = np.array([x0, y0])
        for kind, data, fill in primitives:
            if kind == "polygon":
                draw.polygon([tuple(p) for p in ((data * radius + np.array([cx, cy]) - origin) * s).tolist()],
                             fill=fill)
            else:
                dx, dy, r = data[0]
                px, py, pr = (cx + dx * radius - x0) * s, (cy + dy * radius - y0) * s, r * radius * s
                draw.ellipse([px - pr, py - pr, px + pr, py + pr], fill=fill)
    elif shape in ("circle", "ring"):
        draw.ellipse(local.reshape(-1).tolist(), fill=255)
        if shape == "ring":
            lx, ly, ri = (cx - x0) * s, (cy - y0) * s, radius * s * RING_INNER
            draw.ellipse([lx - ri, ly - ri, lx + ri, ly + ri], fill=0)
    else:
        draw.polygon([tuple(p) for p in local.tolist()], fill=255)
    hi = np.asarray(canvas, dtype=np.float32) / 255.0
    alpha = hi.reshape(h, s, w, s).mean(axis=(1, 3))
    return Coverage(alpha=alpha, x0=x0, y0=y0)


def shade(colour: np.ndarray) -> np.ndarray:
    """A second tone of the same hue for patterns: darker for light colours, lighter for dark."""
    luminance = float(colour @ np.array([0.299, 0.587, 0.114])) / 255.0
    target = 0.0 if luminance > 0.5 else 255.0
    return colour + (target - colour) * 0.45


def pattern_fill(h: int, w: int, colour: np.ndarray, pattern: str | None, period: float,
                 rng: np.random.Generator) -> np.ndarray:
    """float32 [h, w, 3]: the object's colour, with stripes or dots of `shade(colour)`."""
    fill = np.broadcast_to(colour.astype(np.float32), (h, w, 3)).copy()
    if pattern is None:
        return fill
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    period = max(period, 4.0)
    if pattern == "striped":
        angle = rng.uniform(0.0, math.pi)
        phase = rng.uniform(0.0, period)
        t = (xx * math.cos(angle) + yy * math.sin(angle) + phase) % period
        mask = t < period / 2.0
    elif pattern == "dotted":
        ox, oy = rng.uniform(0.0, period, size=2)
        dx = (xx + ox) % period - period / 2.0
        dy = (yy + oy) % period - period / 2.0
        mask = dx * dx + dy * dy < (period * 0.28) ** 2
    else:
        raise GlipError(f"unknown pattern {pattern!r}")
    fill[mask] = shade(colour.astype(np.float32))
    return fill


def render_background(kind: str, height: int, width: int, base: np.ndarray, rng: np.random.Generator
                      ) -> np.ndarray:
    """float32 [H, W, 3] background of the given kind around the `base` colour (RGB 0-255).

    Variations stay within about +-30 of `base`, so objects chosen to contrast with `base`
    stay visible."""
    base = base.astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        img = np.broadcast_to(base, (height, width, 3)).copy()
    elif kind == "gradient":
        angle = rng.uniform(0.0, 2.0 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0) - 0.5  # -0.5 .. 0.5
        delta = rng.uniform(-30.0, 30.0, size=3).astype(np.float32) * 2.0
        img = base + t[..., None] * delta
    elif kind == "noise":
        cells = int(rng.integers(4, 10))
        coarse = rng.normal(0.0, 14.0, size=(cells, cells, 3)).astype(np.float32)
        up = np.asarray(Image.fromarray(coarse[..., 0]).resize((width, height), Image.BILINEAR))
        smooth = np.stack([up] + [np.asarray(Image.fromarray(coarse[..., c]).resize(
            (width, height), Image.BILINEAR)) for c in (1, 2)], axis=-1)
        img = base + smooth + rng.normal(0.0, 5.0, size=(height, width, 3)).astype(np.float32)
    elif kind == "checker":
        cell = int(rng.integers(12, 40))
        parity = ((xx // cell + yy // cell) % 2)[..., None]
        img = base + (parity - 0.5) * 28.0
    elif kind == "waves":
        angle = rng.uniform(0.0, math.pi)
        period = rng.uniform(18.0, 48.0)
        t = np.sin(2.0 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        img = base + t[..., None] * 14.0
    else:
        raise GlipError(f"unknown background {kind!r}; choose one of: {', '.join(BACKGROUNDS)}")
    return np.clip(img, 0.0, 255.0)


def draw_clutter(image: np.ndarray, base: np.ndarray, rng: np.random.Generator) -> None:
    """Paint unannotated clutter into a float32 [H, W, 3] background, in place: a few thin strokes
    (straight or bent) and small specks, in tones 35-80 away from the background's `base` colour.
    Nothing of it is a shape of the world: a detector must learn to leave it alone."""
    height, width = image.shape[:2]
    layer = Image.new("L", (width, height), 0)
    tones = Image.new("RGB", (width, height))
    draw, paint = ImageDraw.Draw(layer), ImageDraw.Draw(tones)
    for _ in range(int(rng.integers(3, 10))):
        offset = rng.uniform(35.0, 80.0) * rng.choice([-1.0, 1.0], size=3)
        tone = tuple(int(v) for v in np.clip(base.astype(np.float64) + offset, 0, 255))
        if rng.random() < 0.6:
            points = [tuple(rng.uniform(0, [width, height])) for _ in range(int(rng.integers(2, 5)))]
            stroke = int(rng.integers(1, 4))
            draw.line(points, fill=255, width=stroke)
            paint.line(points, fill=tone, width=stroke)
        else:
            x, y = rng.uniform(0, [width, height])
            r = float(rng.uniform(1.0, 3.5))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
            paint.ellipse([x - r, y - r, x + r, y + r], fill=tone)
    alpha = np.asarray(layer, dtype=np.float32)[..., None] / 255.0
    image[:] = alpha * np.asarray(tones, dtype=np.float32) + (1.0 - alpha) * image
