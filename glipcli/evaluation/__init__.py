"""Scoring detections against ground truth: COCO box AP, LVIS fixed AP, Flickr30K recall@k.

Pure functions of detections and annotations (no model): `glipcli.engine` (validation during
training) and `glipcli.bench` (benchmark runs) both build on this package.
"""
