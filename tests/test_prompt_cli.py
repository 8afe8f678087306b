"""`glip prompt show`: the caption preview, through the CLI entry point."""

from __future__ import annotations

import re

import pytest

from glipcli.cli.main import main


def _show(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["prompt", "show", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_class_names(capsys):
    code, out, _ = _show(capsys, "-p", "person. traffic light", "-p", "pothole, a dark hole")
    assert code == 0
    assert out.splitlines() == [
        "3 classes, 0 suppression phrases -> 1 caption of at most 256 tokens ([CLS] and [SEP] included)",
        "",
        "caption 1/1: classes 0-2, 13/256 tokens used, 243 free",
        "  'person. traffic light. pothole, a dark hole'",
        "     class 0  'person' chars 0-6  tokens 1-1: person",
        "     class 1  'traffic light' chars 8-21  tokens 3-4: traffic light",
        "     class 2  'pothole' chars 23-30  tokens 6-7: pot ##hole",
    ]


def test_show_prompt_file_flags_labels_thresholds_and_suppression(capsys, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("classes:\n"
                    "  - {name: CoW, text: flat mushroom, threshold: 0.4}\n"
                    "  - {name: package, prefix: 'there is a ', suffix: ' on the porch'}\n"
                    "suppress: [toy car]\n")
    code, out, _ = _show(capsys, str(path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("2 classes, 1 suppression phrase -> 1 caption")
    assert lines[3] == "  'flat mushroom. there is a package on the porch. toy car'"
    assert lines[4] == ("     class 0  'flat mushroom' chars 0-13  tokens 1-2: flat mushroom"
                        "  [label 'CoW'; threshold 0.4]")
    assert lines[5] == "     class 1  'package' chars 26-33  tokens 7-7: package"
    assert lines[6] == "    suppress  'toy car' chars 48-55  tokens 12-13: toy car  [never reported]"


def test_show_chunks(capsys):
    code, out, _ = _show(capsys, "-p", "a. b. c", "--chunk-size", "2")
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("caption ")]
    assert headers == ["caption 1/2: classes 0-1, 5/256 tokens used, 251 free",
                       "caption 2/2: classes 2-2, 3/256 tokens used, 253 free"]


def test_show_lvis_classes_file(capsys, shared_dir):
    code, out, _ = _show(capsys, "--classes-file", str(shared_dir / "data" / "lvis_v1_class_names.txt"))
    assert code == 0
    headers = re.findall(r"^caption (\d+)/(\d+): classes (\d+)-(\d+), (\d+)/256 tokens used", out, re.M)
    assert len(headers) == int(headers[0][1]) > 1
    assert int(headers[0][2]) == 0 and int(headers[-1][3]) == 1202
    for previous, current in zip(headers, headers[1:]):
        assert int(current[2]) == int(previous[3]) + 1  # consecutive classes, none skipped
    assert all(int(h[4]) <= 256 for h in headers)
    assert len(re.findall(r"^ +class \d+ ", out, re.M)) == 1203


@pytest.mark.parametrize("args, message", [
    ([], "error: no classes given: pass -p/--prompt, --classes-file or --prompt-file"),
    (["-p", "a", "--classes-file", "names.txt"], "error: give the classes one way only"),
    (["missing.yaml"], "error: missing.yaml: no such prompt file"),
    (["-p", "a b c d e f", "--max-tokens", "6"], "error: class 'a b c d e f' needs 8 tokens"),
    (["-p", "a", "--chunk-size", "0"], "error: --chunk-size must be a whole number from 1 to"),
])
def test_show_errors_are_one_line(capsys, args, message):
    code, out, err = _show(capsys, *args)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1
    assert out == ""


def test_show_bad_prompt_file_names_the_problem(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("classes:\n  - name: a\n    colour: red\n")
    code, _, err = _show(capsys, str(path))
    assert code == 2
    assert f"{path}: classes[0]: unknown key 'colour'" in err


def test_prompt_command_is_registered(capsys):
    assert main(["--help"]) == 0
    assert re.search(r"\bprompt\b", capsys.readouterr().out)
