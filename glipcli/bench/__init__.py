"""`glip bench`: ODinW registries and suites, benchmark runs, result cells and tables, and the paper's
published numbers (the evaluators themselves are in `glipcli.evaluation`).

Modules: registry (ODinW facts), layout (finding datasets on disk), suite (odinw13 / odinw35 / suite
files), model (which model a run benchmarks), session (the run's model and console), split_eval (a
predictor on a split, scored), runner (ODinW runs), standard (COCO / LVIS / Flickr30K runs), results
(cells, resume, tables), paper (published numbers).
"""
