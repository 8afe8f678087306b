"""`glip bench`: benchmark suites and runs, result cells and tables, and the paper's published
numbers (the evaluators are in `glipcli.evaluation`; the ODinW facts, on-disk layout and download
in `glipcli.data.odinw`).

Modules: suite (odinw13 / odinw35 / suite files), model (which model a run benchmarks), session (the run's model and console), split_eval (a
predictor on a split, scored), runner (ODinW runs), standard (COCO / LVIS / Flickr30K runs), results
(cells, resume, tables), paper (published numbers).
"""
