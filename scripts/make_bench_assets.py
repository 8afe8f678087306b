"""Write the package data of `glip bench` from the GLIP reference data.

    python scripts/make_bench_assets.py [--shared PATH/TO/shared]

Reads (default `../shared` beside the checkout, or `GLIP_SHARED_DIR`):

- `odinw/registry.json`: facts of the official GLIP `configs/odinw_13` and `configs/odinw_35` files;
- `paper/glip_numbers.yaml`: the published GLIP numbers;

and writes, inside the package (so that an installed `glip` never reads `../shared` at run time):

- `glipcli/assets/odinw_registry.json`: the registry, each dataset given a unique short `name`
  (its data folder under `odinw/`, plus the sub-folder where ODinW-35 holds several versions of it:
  `AerialMaritimeDrone_large`, `EgoHands_generic`, `OxfordPets_by-breed`), its folder name `folder`,
  the name the paper's tables use (`paper_name`, ODinW-13 only) and the few-shot split files as
  `{split, shots, seed, path}` records; every other field is copied unchanged;
- `glipcli/assets/glip_paper_numbers.yaml`: a byte-for-byte copy of the published numbers.

Re-run it whenever the reference data changes; `tests/test_odinw_registry.py` checks the package copy
against the reference data.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "glipcli" / "assets"
FEWSHOT_KEY = re.compile(r"^(?P<split>[a-z]+)_(?P<shots>\d+)_(?P<seed>\d+)$")


def default_shared() -> Path:
    env = os.environ.get("GLIP_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared"


def _folder_parts(entry: dict) -> list[str]:
    parts = entry["splits"]["train"]["ann_file"].split("/")
    if parts[0] != "odinw":
        raise SystemExit(f"{entry['config']}: annotation path does not start with odinw/: {parts}")
    return parts[1:]


def convert(registry: dict, paper: dict) -> dict:
    folders = Counter(_folder_parts(e)[0] for e in registry["odinw35"])
    paper_names = paper["odinw13_zero_shot_per_dataset"]["order"]
    odinw13_configs = {e["config"] for e in registry["odinw13"]}
    out: dict = {"source": registry["source"], "generated_by": "scripts/make_bench_assets.py"}
    for suite in ("odinw13", "odinw35"):
        entries = []
        for entry in registry[suite]:
            parts = _folder_parts(entry)
            folder = parts[0]
            name = folder if folders[folder] == 1 else f"{folder}_{parts[1]}"
            in_odinw13 = entry["config"] in odinw13_configs
            matches = [p for p in paper_names if p.lower() == folder.lower()] if in_odinw13 else []
            fewshot = []
            for key, path in sorted(entry["fewshot_splits"].items()):
                m = FEWSHOT_KEY.match(key)
                if not m:
                    raise SystemExit(f"{entry['config']}: unexpected few-shot key {key!r}")
                fewshot.append({"split": m["split"], "shots": int(m["shots"]), "seed": int(m["seed"]), "path": path})
            fewshot.sort(key=lambda r: (r["split"], r["shots"], r["seed"]))
            entries.append({
                "name": name,
                "folder": folder,
                "paper_name": matches[0] if matches else None,
                "config": entry["config"],
                "classes": entry["classes"],
                "category_ids": entry["category_ids"],
                "caption_prompt": entry["caption_prompt"],
                "eval_split": entry["eval_split"],
                "splits": entry["splits"],
                "fewshot": fewshot,
                "general_copy": entry["general_copy"],
                "input": entry["input"],
            })
        names = [e["name"] for e in entries]
        if len(set(names)) != len(names):
            raise SystemExit(f"{suite}: dataset names are not unique: {names}")
        if suite == "odinw13" and sorted(e["paper_name"] or "" for e in entries) != sorted(paper_names):
            raise SystemExit("odinw13: the datasets do not match the paper's per-dataset table")
        out[suite] = entries
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=default_shared(), help="the GLIP reference data folder")
    args = parser.parse_args()
    registry = json.loads((args.shared / "odinw" / "registry.json").read_text(encoding="utf-8"))
    numbers = args.shared / "paper" / "glip_numbers.yaml"
    data = convert(registry, yaml.safe_load(numbers.read_text(encoding="utf-8")))
    ASSETS.mkdir(parents=True, exist_ok=True)
    target = ASSETS / "odinw_registry.json"
    target.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(target.relative_to(REPO))
    shutil.copyfile(numbers, ASSETS / "glip_paper_numbers.yaml")
    print((ASSETS / "glip_paper_numbers.yaml").relative_to(REPO))


if __name__ == "__main__":
    main()
