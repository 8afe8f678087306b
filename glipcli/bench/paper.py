"""The published GLIP numbers (paper arXiv 2112.03857 and the official README), to print beside ours.

`glipcli/assets/glip_paper_numbers.yaml` is a copy of the reference data's `paper/glip_numbers.yaml`
(`scripts/make_bench_assets.py`). Numbers are AP / recall in percent, as published. Only the official
presets have published numbers (`glip-t-a`, `glip-t-b`, `glip-t-c`, `glip-t`, `glip-l`); every lookup
returns None for anything else, and for a cell the paper does not report.

Which published number goes with which of our cells (ODinW):

- zero-shot with the manual prompts: Table 12 per dataset (GLIP-T, GLIP-L) and Table 10's average;
  zero-shot with the plain prompts: Table 9's "original prompt" column (GLIP-T, six datasets); the
  paper's zero-shot average used the manual prompts, so plain-prompt averages get no number;
- full-model tuning, K shots: Table 10's average, mean ± std over seeds 3/30/300; all data: "full";
- linear probing: Table 11's average; prompt tuning: not in the published-number file (None).
  Averages are ODinW-13 averages: they go beside our average only when all 13 datasets were run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from glipcli.errors import GlipError

NUMBERS_PATH = Path(__file__).resolve().parents[1] / "assets" / "glip_paper_numbers.yaml"
PRESETS = ("glip-t-a", "glip-t-b", "glip-t-c", "glip-t", "glip-l")
ALL_DATA = -1  # shots value of full-data fine-tuning (also in glipcli.bench.results)


@dataclass(frozen=True)
class PaperValue:
    """A published number (percent) and, for few-shot averages, its std over seeds."""

    value: float
    std: float | None = None
    source: str = ""

    def format(self) -> str:
        return f"{self.value:.1f}" + (f" ± {self.std:.1f}" if self.std is not None else "")


@lru_cache(maxsize=1)
def paper_numbers() -> Mapping[str, Any]:
    try:
        return yaml.safe_load(NUMBERS_PATH.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise GlipError(f"{NUMBERS_PATH}: the packaged paper numbers cannot be read ({exc})") from None


def official_preset(model: str | None) -> str | None:
    """`model` as an official preset name, or None (a config file, a checkpoint, a custom model)."""
    if model is None:
        return None
    key = model.strip().lower()
    return key if key in PRESETS else None


def _shot_key(shots: int) -> str | None:
    if shots == 0:
        return "zero"
    if shots == ALL_DATA:
        return "full"
    return f"shot{shots}" if shots in (1, 3, 5, 10) else None


def odinw13_average(model: str | None, shots: int, mode: str, prompts: str) -> PaperValue | None:
    """The paper's ODinW-13 average AP for a cell setting (shots 0 = zero-shot, -1 = all data)."""
    preset = official_preset(model)
    key = _shot_key(shots)
    if preset is None or key is None:
        return None
    numbers = paper_numbers()
    if shots == 0:
        if prompts != "manual":
            return None
        table, source = numbers["odinw13_average_ap"], "paper Table 10 (zero-shot, manual prompts)"
    elif mode == "full":
        table, source = numbers["odinw13_average_ap"], "paper Table 10 (full-model tuning)"
    elif mode == "linear":
        table, source = numbers["odinw13_linear_probe_average_ap"], "paper Table 11 (linear probing)"
    else:
        return None
    value = table.get(preset, {}).get(key)
    if value is None:
        return None
    if isinstance(value, list):
        return PaperValue(float(value[0]), float(value[1]), source)
    return PaperValue(float(value), None, source)


def odinw_dataset_zero_shot(model: str | None, paper_name: str | None, prompts: str) -> PaperValue | None:
    """The paper's zero-shot AP of one ODinW-13 dataset (`paper_name` as the registry gives it)."""
    preset = official_preset(model)
    if preset is None or not paper_name:
        return None
    numbers = paper_numbers()
    if prompts == "manual":
        table = numbers["odinw13_zero_shot_per_dataset"]
        if preset in table and paper_name in table["order"]:
            return PaperValue(float(table[preset][table["order"].index(paper_name)]), None, "paper Table 12")
        return None
    if prompts == "plain" and preset == "glip-t":
        row = numbers["odinw_manual_prompts_glip_t"].get(paper_name)
        if row is not None:
            return PaperValue(float(row["original"]), None, "paper Table 9 (original prompt)")
    return None


def coco_box_ap(model: str | None, finetuned: bool = False) -> PaperValue | None:
    """COCO val2017 box AP (official README): zero-shot, or after COCO fine-tuning."""
    preset = official_preset(model)
    row = paper_numbers()["coco_val2017_box_ap"].get(preset) if preset else None
    if row is None:
        return None
    key = "finetuned" if finetuned else "zero_shot"
    note = f" ({row['note']})" if finetuned and row.get("note") else ""
    return PaperValue(float(row[key]), None, "official README" + note)


def lvis_fixed_ap(model: str | None, split: str) -> dict[str, PaperValue] | None:
    """Zero-shot LVIS fixed AP (paper Table 3): {"APr", "APc", "APf", "AP"}; split `minival` or `val_v1`."""
    preset = official_preset(model)
    table = paper_numbers()["lvis_fixed_ap_zero_shot"].get(split, {})
    row = table.get(preset) if preset else None
    if row is None:
        return None
    return {k: PaperValue(float(v), None, f"paper Table 3 ({split})") for k, v in zip(("APr", "APc", "APf", "AP"), row)}


def flickr_recall(model: str | None, split: str) -> dict[int, PaperValue] | None:
    """Flickr30K Entities Recall@1/5/10 (paper): {1, 5, 10}; split `val` or `test`."""
    preset = official_preset(model)
    table = paper_numbers()["flickr30k_entities_recall"].get(split, {})
    row = table.get(preset) if preset else None
    if row is None:
        return None
    return {k: PaperValue(float(v), None, f"paper ({split})") for k, v in zip((1, 5, 10), row)}
