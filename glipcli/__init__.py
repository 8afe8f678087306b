"""glip: Grounded Language-Image Pre-training as a library and a CLI."""

__version__ = "0.1.0"
