"""`glip bench`: ODinW registries and suites, evaluators (COCO, LVIS fixed AP, Flickr30K Entities recall),
result cells and tables, and the paper's published numbers.

Modules: registry (ODinW facts), layout (finding datasets on disk), suite (odinw13 / odinw35 / suite
files), coco_eval, lvis_eval, flickr_eval (pure evaluators), results (cells, resume, tables), paper
(published numbers).
"""
