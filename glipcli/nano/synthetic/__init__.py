"""A procedural grounding world of coloured shapes, deterministic by seed.

    from glipcli.nano.synthetic import SyntheticWorld, write_coco_dataset

    world = SyntheticWorld(seed=0)
    scene = world.scene(0, "pretrain", stream="train")    # image + objects with boxes
    captions = world.captions(scene)                       # captions with grounded phrase spans
    write_coco_dataset("shapes/", 1000, 100, 100, seed=0, task="pretrain")

Modules: `vocabulary` (words, synonyms, held-out definitions), `render` (rasterising shapes,
patterns, backgrounds), `tasks` (scene rules, category schemes, named tasks), `world`
(sampling scenes), `captions` (captions with phrase spans), `writer` (the dataset on disk).
"""

from glipcli.nano.synthetic.captions import Caption, CaptionPhrase, spatial_relation
from glipcli.nano.synthetic.tasks import TASKS, CategoryScheme, SceneRules, task_categories, task_rules
from glipcli.nano.synthetic.vocabulary import (CLASSIC_SHAPES, COLOURS, DEFAULT_HELD_OUT_COMBOS,
                                               DEFAULT_HELD_OUT_SHAPE, EXTRA_SHAPES, SHAPES, HeldOut, category_text,
                                               parse_combo)
from glipcli.nano.synthetic.world import WORLD_EDITIONS, ObjectSpec, Scene, SceneObject, SyntheticWorld, WorldConfig
from glipcli.nano.synthetic.writer import DatasetReport, SplitReport, write_coco_dataset

__all__ = [
    "CLASSIC_SHAPES", "COLOURS", "DEFAULT_HELD_OUT_COMBOS", "DEFAULT_HELD_OUT_SHAPE", "EXTRA_SHAPES", "SHAPES",
    "TASKS", "WORLD_EDITIONS",
    "Caption", "CaptionPhrase", "CategoryScheme", "DatasetReport", "HeldOut", "ObjectSpec", "Scene",
    "SceneObject", "SceneRules", "SplitReport", "SyntheticWorld", "WorldConfig", "category_text",
    "parse_combo", "spatial_relation", "task_categories", "task_rules", "write_coco_dataset",
]
