"""The ODinW-13 and ODinW-35 registries: facts of the official GLIP configs, shipped in the package.

`glipcli/assets/odinw_registry.json` is generated from the GLIP reference data by
`scripts/make_bench_assets.py` (the package never reads `../shared` at run time). Per dataset:

- `name`: a unique short name, the dataset's folder under `odinw/` (`Raccoon`, `pothole`), with the
  version appended where ODinW-35 holds several (`AerialMaritimeDrone_large`, `EgoHands_generic`,
  `OxfordPets_by-breed`). The same data has the same name in both suites.
- `config`: the official config file (`Raccoon_Raccoon.v2-raw.coco.yaml`); the ODinW prompt files are
  named after it: `prompts/odinw/{plain,manual}/<config>` (`prompt_file_name`).
- `classes` / `category_ids`: the class names as the suite's official configs give them
  (`OVERRIDE_CATEGORY`, category-id order). They differ between the suites for two datasets:
  ODinW-13 has `Cottontail-Rabbit` and `CoW`/`chanterelle`, ODinW-35 `rabbit` and
  `flat mushroom`/`yellow mushroom` (the names the paper's manual prompts ground).
- `caption_prompt`: the official caption prompt (per class prefix + name + suffix), where there is one.
- `eval_split`: `val`, or `minival` (EgoHands, VehiclesOpenImages and the other large sets).
- `splits`: per split, the annotation file (`annotations_without_background.json`) and image folder,
  relative to the official data root (`DATA_ROOT/odinw/...`).
- `fewshot`: the prepared few-shot files (`fewshot_train_shot{K}_seed{S}.json`), per split, shots, seed.
- `general_copy`: the dataset copies per epoch of the official full-data fine-tuning.

Names are looked up case-insensitively, ignoring `_`, `-`, `.` and spaces; a dataset may also be named
by its config (with or without `.yaml`), its folder or its paper name where that is unambiguous.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from glipcli.errors import GlipError
from glipcli.prompts.prompt_file import name_key  # noqa: F401  (dataset names compare as class names do)

REGISTRY_PATH = Path(__file__).resolve().parents[2] / "assets" / "odinw_registry.json"
SUITES = ("odinw13", "odinw35")
PROMPT_VARIANTS = ("plain", "manual")
OFFICIAL_SHOTS = (1, 3, 5, 10)
OFFICIAL_SEEDS = (3, 30, 300)


@dataclass(frozen=True)
class RegistrySplit:
    """One split of an ODinW dataset, relative to the official data root."""

    ann_file: str
    img_dir: str


@dataclass(frozen=True)
class CaptionPromptPart:
    """One class of an official caption prompt: only `name` is grounded."""

    prefix: str
    name: str
    suffix: str


@dataclass(frozen=True)
class FewShotFile:
    """A prepared few-shot split file of the official data (relative to the data root)."""

    split: str
    shots: int
    seed: int
    path: str


@dataclass(frozen=True)
class OdinwDataset:
    """One dataset of an ODinW suite (see the module docstring for the fields)."""

    suite: str
    name: str
    folder: str
    config: str
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    eval_split: str
    splits: Mapping[str, RegistrySplit]
    fewshot: tuple[FewShotFile, ...] = ()
    caption_prompt: tuple[CaptionPromptPart, ...] | None = None
    general_copy: int = 1
    min_size_test: int = 800
    max_size_test: int = 1333
    paper_name: str | None = None
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @property
    def config_stem(self) -> str:
        return self.config[: -len(".yaml")] if self.config.endswith(".yaml") else self.config

    @property
    def prompt_file_name(self) -> str:
        """File name of this dataset's prompt files: `prompts/odinw/{plain,manual}/<this>`."""
        return self.config

    def prompt_file(self, prompts_dir: str | Path, variant: str) -> Path:
        """`prompts_dir/<variant>/<config>`: the dataset's plain or manual prompt file."""
        if variant not in PROMPT_VARIANTS:
            raise GlipError(f"unknown prompt variant {variant!r} (choose {' or '.join(PROMPT_VARIANTS)})")
        return Path(prompts_dir) / variant / self.prompt_file_name

    def fewshot_file(self, shots: int, seed: int, split: str = "train") -> FewShotFile | None:
        """The prepared few-shot file of `split` for (shots, seed), if the official data has one."""
        for entry in self.fewshot:
            if entry.split == split and entry.shots == shots and entry.seed == seed:
                return entry
        return None

    @property
    def eval(self) -> RegistrySplit:
        return self.splits[self.eval_split]


def _dataset(suite: str, raw: Mapping) -> OdinwDataset:
    prompt = raw.get("caption_prompt")
    entry = OdinwDataset(
        suite=suite,
        name=raw["name"],
        folder=raw["folder"],
        config=raw["config"],
        classes=tuple(raw["classes"]),
        category_ids=tuple(int(i) for i in raw["category_ids"]),
        eval_split=raw["eval_split"],
        splits={k: RegistrySplit(v["ann_file"], v["img_dir"]) for k, v in raw["splits"].items()},
        fewshot=tuple(FewShotFile(f["split"], int(f["shots"]), int(f["seed"]), f["path"]) for f in raw["fewshot"]),
        caption_prompt=(tuple(CaptionPromptPart(p["prefix"], p["name"], p["suffix"]) for p in prompt)
                        if prompt else None),
        general_copy=int(raw["general_copy"]),
        min_size_test=int(raw["input"]["MIN_SIZE_TEST"]),
        max_size_test=int(raw["input"]["MAX_SIZE_TEST"]),
        paper_name=raw.get("paper_name"),
    )
    aliases = {entry.name, entry.config, entry.config_stem, entry.folder}
    if entry.paper_name:
        aliases.add(entry.paper_name)
    return replace(entry, aliases=tuple(sorted(aliases)))


@lru_cache(maxsize=1)
def _load() -> dict[str, tuple[OdinwDataset, ...]]:
    try:
        raw = json.loads(REGISTRY_PATH.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:  # a broken installation, not a user error
        raise GlipError(f"{REGISTRY_PATH}: the packaged ODinW registry cannot be read ({exc})") from None
    return {suite: tuple(_dataset(suite, e) for e in raw[suite]) for suite in SUITES}


def registry_source() -> str:
    """Where the registry's facts come from (the official repository and commit)."""
    return json.loads(REGISTRY_PATH.read_text(encoding="utf-8"))["source"]


def odinw_suite(suite: str) -> tuple[OdinwDataset, ...]:
    """The datasets of `odinw13` or `odinw35`, in the official order."""
    key = suite.lower().replace("-", "").replace("_", "")
    if key not in SUITES:
        raise GlipError(f"unknown ODinW suite {suite!r} (choose {' or '.join(SUITES)})")
    return _load()[key]


def find_datasets(datasets: Sequence[OdinwDataset], names: Sequence[str]) -> list[OdinwDataset]:
    """The datasets called `names` (any alias, see the module docstring), in the order given.

    Raises GlipError naming an unknown or ambiguous name and listing the valid names."""
    chosen: list[OdinwDataset] = []
    for name in names:
        key = name_key(name)
        if not key:
            raise GlipError(f"empty dataset name in {list(names)!r}")
        exact = [d for d in datasets if name_key(d.name) == key]
        matches = exact or [d for d in datasets if any(name_key(a) == key for a in d.aliases)]
        if len(matches) > 1:
            raise GlipError(f"dataset name {name!r} is ambiguous: "
                            f"{', '.join(d.name for d in matches)}")
        if not matches:
            raise GlipError(f"unknown dataset {name!r}; choose from: {', '.join(d.name for d in datasets)}")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def odinw_dataset(name: str, suite: str = "odinw35") -> OdinwDataset:
    """One dataset of `suite` by any of its names."""
    return find_datasets(odinw_suite(suite), [name])[0]
