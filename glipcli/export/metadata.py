"""What an exported file records about itself (ONNX `metadata_props`).

Key `glip` holds one JSON object (`ExportMetadata`); keys `classes` (a JSON list) and
`glip_version` repeat the essentials for tools that show metadata (e.g. Netron).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from glipcli.errors import GlipError

FORMAT = "glip-onnx/1"


@dataclass
class ExportMetadata:
    """classes: the output labels; phrases: the caption's grounded phrases, in order; phrase_class[i]:
    the class of phrase i, or -1 for a suppression phrase (its detections are never reported but
    drop overlapped, lower-scoring class detections at IoU > suppress_iou); class_thresholds[c]:
    class c's own score threshold (None: the run's threshold). Input policy: images resized as
    `min_size`/`max_size` say (PIL bilinear), BGR 0..255 normalised with pixel_mean/pixel_std,
    zero-padded at the bottom/right to multiples of size_divisible; any size and batch."""

    glip_version: str
    model: str
    caption: str
    classes: list[str]
    phrases: list[str]
    phrase_class: list[int]
    class_thresholds: list[float | None]
    suppress_iou: float | None
    min_size: int
    max_size: int | None
    size_divisible: int
    pixel_mean: list[float]
    pixel_std: list[float]
    score_threshold: float
    pre_nms_top_n: int
    nms_threshold: float
    max_detections: int
    opset: int
    adapter: str | None = None
    format: str = FORMAT
    extra: dict[str, str] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        return {"glip": json.dumps(asdict(self)), "classes": json.dumps(self.classes),
                "glip_version": self.glip_version}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "the ONNX file") -> "ExportMetadata":
        if "glip" not in props:
            raise GlipError(f"{source}: not a file made by `glip export` (no glip metadata)")
        try:
            raw = json.loads(props["glip"])
            if raw.get("format") != FORMAT:
                raise GlipError(f"{source}: export format {raw.get('format')!r}; this glip reads {FORMAT!r}")
            return cls(**raw)
        except (ValueError, TypeError) as exc:
            raise GlipError(f"{source}: unreadable glip metadata ({exc})") from None
