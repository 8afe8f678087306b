"""Result cells, resume, summaries over seeds and datasets, the table files, and the paper's numbers."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from glipcli.bench import paper
from glipcli.data.odinw.registry import odinw_suite
from glipcli.bench.results import (ALL_DATA, AVERAGE, ZERO_SHOT, CellKey, CellResult, ResultsStore, SettingKey,
                                   rich_table, summarize, to_markdown)
from glipcli.errors import GlipError


def cell(dataset, shots, seed, ap, ap50=None, mode="full", prompts="manual"):
    return CellResult(CellKey.make(dataset, shots, seed, mode, prompts), ap, ap if ap50 is None else ap50,
                      {"AP": ap}, {"num_images": 3})


# -- cell keys -------------------------------------------------------------------------------------------
def test_cell_keys():
    zero = CellKey.make("Raccoon", ZERO_SHOT, 30, "linear", "manual")
    assert (zero.seed, zero.mode) == (None, "zero-shot")  # zero-shot: no seed, no tuning mode
    assert zero == CellKey.make("Raccoon", 0, None, "full", "manual")
    assert zero.setting.label == "zero-shot, manual"
    k = CellKey.make("Raccoon", 5, 300, "prompt", "plain")
    assert k.file_stem == "Raccoon__shot5__seed300__prompt__plain" and k.setting.label == "5-shot, prompt, plain"
    assert CellKey.make("a", ALL_DATA, 3, "full", "names").file_stem == "a__all__seed3__full__names"
    odd = CellKey.make("my data/set 1", 1, 3, "full", "file")
    assert "/" not in odd.file_stem and " " not in odd.file_stem
    assert odd.file_stem != CellKey.make("my data_set 1", 1, 3, "full", "file").file_stem
    assert CellKey.from_dict(k.to_dict()) == k
    with pytest.raises(GlipError, match="tuning mode must be one of full, prompt, linear"):
        CellKey.make("a", 1, 3, "lora", "manual")
    with pytest.raises(GlipError, match="needs an integer seed"):
        CellKey.make("a", 1, None, "full", "manual")
    with pytest.raises(GlipError, match="shots must be"):
        CellKey.make("a", -5, 3, "full", "manual")


# -- storage and resume ----------------------------------------------------------------------------------
def test_store_records_and_resumes(tmp_path):
    run = {"model": "glip-t", "suite": "odinw13"}
    store = ResultsStore(tmp_path / "out", run)
    keys = [CellKey.make(d, 1, s, "full", "manual") for d in ("A", "B") for s in (3, 30)]
    assert store.pending(keys) == keys and store.cells() == []
    store.add(CellResult(keys[0], 0.5, 0.7, {"AP": 0.5}, {"seconds": 1.5}))
    store.add(CellResult(keys[3], 0.25, 0.4))
    # a new store on the same folder (a re-run) sees the finished cells and skips them
    again = ResultsStore(tmp_path / "out", run)
    assert again.pending(keys) == [keys[1], keys[2]]
    assert again.get(keys[0]) == CellResult(keys[0], 0.5, 0.7, {"AP": 0.5}, {"seconds": 1.5})
    assert again.get(keys[1]) is None
    assert [c.key for c in again.cells()] == [keys[0], keys[3]]
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == run
    assert not [p for p in (tmp_path / "out").rglob("*.tmp")]  # atomic writes leave nothing behind
    with pytest.raises(GlipError, match="holds results of a different run: model='glip-t' \\(now 'glip-l'\\)"):
        ResultsStore(tmp_path / "out", {"model": "glip-l"})
    ResultsStore(tmp_path / "out", {"model": "glip-t", "device": "cuda"})  # new keys are fine
    with pytest.raises(GlipError, match="must be a number"):
        store.add(CellResult(keys[1], math.nan, 0.1))


def test_store_rejects_broken_cells(tmp_path):
    store = ResultsStore(tmp_path, {"model": "x"})
    key = CellKey.make("A", 1, 3, "full", "manual")
    store.path(key).parent.mkdir(parents=True, exist_ok=True)
    store.path(key).write_text("{not json")
    with pytest.raises(GlipError, match="unreadable result cell .*delete it to run the cell again"):
        store.cells()
    store.path(key).write_text(json.dumps(CellResult(CellKey.make("B", 1, 3, "full", "manual"), 0.1, 0.2).to_dict()))
    with pytest.raises(GlipError, match="not the one its name says"):
        store.get(key)


# -- summaries -------------------------------------------------------------------------------------------
def test_summary_over_seeds_and_datasets():
    cells = [cell("A", 1, 3, 0.40, 0.60), cell("A", 1, 30, 0.50, 0.70), cell("B", 1, 3, 0.20, 0.30),
             cell("B", 1, 30, 0.30, 0.50), cell("A", 0, None, 0.10), cell("B", 0, None, 0.30)]
    s = summarize(cells, ["A", "B"])
    one = SettingKey(1, "full", "manual")
    zero = SettingKey(0, "zero-shot", "manual")
    assert s.settings == (zero, one)
    a = s.row("A", one)
    assert a.seeds == (3, 30) and a.ap.mean == pytest.approx(45.0) and a.ap.std == pytest.approx(5.0)
    assert a.ap50.mean == pytest.approx(65.0) and a.ap.n == 2
    # the average: per seed over datasets (30.0, 40.0), then mean ± std over the seeds
    avg = s.row(AVERAGE, one)
    assert avg.ap.mean == pytest.approx(35.0) and avg.ap.std == pytest.approx(5.0) and avg.seeds == (3, 30)
    assert avg.ap50.mean == pytest.approx(52.5)
    z = s.row(AVERAGE, zero)
    assert z.ap.mean == pytest.approx(20.0) and z.ap.std is None and z.ap.format() == "20.0"
    assert avg.ap.format() == "35.0 ± 5.0"


def test_partial_averages_are_not_given():
    cells = [cell("A", 1, 3, 0.4), cell("A", 1, 30, 0.5), cell("B", 1, 3, 0.2)]
    s = summarize(cells, ["A", "B", "C"])
    avg = s.row(AVERAGE, SettingKey(1, "full", "manual"))
    assert avg.ap is None and avg.partial == "2/3 datasets"
    s = summarize(cells, ["A", "B"])  # every dataset done, but only seed 3 on both
    avg = s.row(AVERAGE, SettingKey(1, "full", "manual"))
    assert avg.seeds == (3,) and avg.ap.mean == pytest.approx(30.0)
    assert s.row("C", SettingKey(1, "full", "manual")) is None


def test_table_files(tmp_path):
    store = ResultsStore(tmp_path, {"model": "my-model"})
    for c in (cell("A", 1, 3, 0.40, 0.60), cell("A", 1, 30, 0.50, 0.70), cell("B", 1, 3, 0.20, 0.30),
              cell("B", 1, 30, 0.30, 0.50)):
        store.add(c)
    files = store.write_tables(["A", "B"], model="my-model")
    data = json.loads(files.json.read_text())
    assert data["run"] == {"model": "my-model"} and len(data["cells"]) == 4
    assert data["summary"]["unit"] == "percent"
    rows = list(csv.DictReader(io.StringIO(files.csv.read_text())))
    assert [(r["dataset"], r["ap_mean"], r["ap_std"], r["seeds"]) for r in rows] == [
        ("A", "45.00", "5.00", "3 30"), ("B", "25.00", "5.00", "3 30"), (AVERAGE, "35.00", "5.00", "3 30")]
    md = files.markdown.read_text()
    assert "| Average | 35.0 ± 5.0 | 52.5 ± 7.5 |" in md and "paper" not in md  # not an official preset
    assert rich_table(summarize(store.cells(), ["A", "B"])).row_count == 3


# -- the paper's numbers ---------------------------------------------------------------------------------
def test_paper_numbers_beside_ours():
    suite = odinw_suite("odinw13")
    names = [d.name for d in suite]
    paper_names = {d.name: d.paper_name for d in suite}
    cells = [cell(n, 0, None, 0.5) for n in names] + [cell(n, 1, s, 0.5) for n in names for s in (3, 30, 300)]
    s = summarize(cells, names, "glip-t", paper_names, "odinw13")
    zero = SettingKey(0, "zero-shot", "manual")
    assert s.row("Raccoon", zero).paper.value == 57.8
    assert s.row("EgoHands_generic", zero).paper.value == 50.0
    assert s.row(AVERAGE, zero).paper.value == 46.5
    one = s.row(AVERAGE, SettingKey(1, "full", "manual"))
    assert (one.paper.value, one.paper.std) == (51.1, 0.1) and one.paper.format() == "51.1 ± 0.1"
    assert s.row("Raccoon", SettingKey(1, "full", "manual")).paper is None  # no per-dataset few-shot numbers
    # not all 13 datasets: no published average beside ours
    few = summarize(cells, names[:2], "glip-t", paper_names, "odinw13")
    assert few.row(AVERAGE, zero).paper is None
    # a non-preset model gets none
    assert not summarize(cells, names, "my.pth", paper_names, "odinw13").has_paper
    # plain prompts: Table 9's "original prompt" numbers (GLIP-T), no published average
    plain = summarize([cell("EgoHands_generic", 0, None, 0.2, prompts="plain")], ["EgoHands_generic"],
                      "glip-t", paper_names)
    assert plain.row("EgoHands_generic", SettingKey(0, "zero-shot", "plain")).paper.value == 22.1
    md = to_markdown(s)
    assert "zero-shot, manual: paper AP" in md and "paper Table 12" in md
    assert "| Raccoon | 50.0 | 50.0 | 57.8 | 50.0 ± 0.0 | 50.0 ± 0.0 |  |" in md


def test_paper_lookups():
    assert paper.official_preset("GLIP-T") == "glip-t" and paper.official_preset("x.pth") is None
    assert paper.odinw13_average("glip-l", 10, "full", "manual").format() == "64.9 ± 0.9"
    assert paper.odinw13_average("glip-t", ALL_DATA, "full", "plain").value == 64.9
    assert paper.odinw13_average("glip-t", 5, "linear", "manual").value == 50.4
    assert paper.odinw13_average("glip-l", 5, "linear", "manual") is None  # not published
    assert paper.odinw13_average("glip-t", 5, "prompt", "manual") is None
    assert paper.odinw13_average("glip-t", 0, "zero-shot", "plain") is None
    assert paper.coco_box_ap("glip-t").value == 46.6 and paper.coco_box_ap("glip-l", finetuned=True).value == 61.7
    lv = paper.lvis_fixed_ap("glip-t", "minival")
    assert (lv["APr"].value, lv["APc"].value, lv["APf"].value, lv["AP"].value) == (20.8, 21.4, 31.0, 26.0)
    assert paper.lvis_fixed_ap("glip-t", "val_v1")["AP"].value == 17.2
    assert {k: v.value for k, v in paper.flickr_recall("glip-t", "val").items()} == {1: 85.3, 5: 95.7, 10: 97.2}
    assert paper.flickr_recall("glip-t", "test") is None and paper.flickr_recall("glip-t-c", "test")[1].value == 85.5
