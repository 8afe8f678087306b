"""glip: Grounded Language-Image Pre-training as a library and a CLI.

    from glipcli import GLIPPredictor
    predictor = GLIPPredictor.from_pretrained("glip-t", weights="glip_tiny_model_o365_goldg.pth")
    results = predictor.predict("street.jpg", "person. bicycle. car.")
"""

from __future__ import annotations

__version__ = "0.1.0"

# Heavy imports (torch, transformers) happen on first use, so `glip --help` stays quick.
_LAZY = {
    "GLIPPredictor": "glipcli.predictor",
    "ImageResult": "glipcli.predictor",
    "Detection": "glipcli.predictor",
    "GLIP": "glipcli.modeling.glip",
    "GLIPConfig": "glipcli.config",
    "PRESETS": "glipcli.config",
    "get_preset": "glipcli.config",
    "config_from_yacs": "glipcli.yacs_config",
    "load_checkpoint": "glipcli.checkpoint",
    "save_safetensors": "glipcli.checkpoint",
    "GlipError": "glipcli.errors",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glipcli' has no attribute {name!r}")
