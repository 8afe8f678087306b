"""Every command's help reads at 80 columns: no line wider, whole command summaries (no "..."), short
metavars instead of Python types for repeatable options."""

from __future__ import annotations

import pytest

from glipcli.cli.main import main

COMMANDS = [[], ["detect"], ["ground"], ["finetune"], ["prompt-tune"], ["pretrain"], ["synth-data"], ["convert"],
            ["bench"], ["bench", "odinw"], ["bench", "coco"], ["bench", "lvis"], ["bench", "flickr30k"],
            ["bench", "synthetic"], ["prompt"], ["prompt", "show"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "glip")
def test_help_fits_80_columns(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    wide = [line for line in out.splitlines() if len(line) > 80]
    assert wide == []
    options = [line for line in out.splitlines() if line.lstrip().startswith("-")]
    assert not [line for line in options if "<list[" in line]
    if "Commands:" in out:
        summaries = out.split("Commands:", 1)[1].splitlines()
        assert not [line for line in summaries if line.rstrip().endswith("...")]
