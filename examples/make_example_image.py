"""Write examples/shapes.png, the image of the README's first example.

    python examples/make_example_image.py [OUT.png]

A hand-placed synthetic scene (glipcli.nano.synthetic): a large red circle, a large blue square,
a small yellow star, a striped pink diamond and a small dotted green heart on a gradient. Only
colour-shape pairs seen in pre-training are used. The output is the same on every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from glipcli.nano.synthetic import ObjectSpec, SyntheticWorld

OBJECTS = [
    ObjectSpec("circle", "red", "large", x=0.27, y=0.38),
    ObjectSpec("square", "blue", "large", x=0.70, y=0.62, rotation=8.0),
    ObjectSpec("star", "yellow", "small", x=0.80, y=0.20),
    ObjectSpec("diamond", "pink", "large", pattern="striped", x=0.50, y=0.26),
    ObjectSpec("heart", "green", "small", pattern="dotted", x=0.22, y=0.78),
]


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "shapes.png"
    scene = SyntheticWorld(seed=0).compose(OBJECTS, width=320, height=240, background="gradient")
    scene.to_pil().save(out)
    boxes = "; ".join(f"{o.colour} {o.shape} {list(o.box)}" for o in scene.objects)
    print(f"wrote {out} ({scene.width}x{scene.height}): {boxes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
