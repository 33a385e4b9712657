"""``medzoo data ...`` through the CLI: synth, info, bench, fetch offline, and bad input."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest

from medzoo.cli import main
from medzoo.data import fetch


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medzoo: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_synth_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mimeta"
    argv = ["data", "synth", str(out), "--datasets", "crc", "organs_axial", "--size", "16"]
    assert main(argv + ["--per-class", "4", "--seed", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["data", "info", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "dataset", "task", "classes", "train", "val", "test", "image_size", "channels",
        "modality", "preset",
    ]  # fmt: skip
    assert table[2].split() == [
        "crc", "tissue", "class", "9", "36", "18", "27", "16x16", "3", "Histopathology", "histology"
    ]  # fmt: skip
    assert table[3].split() == [
        "organs_axial",
        "organ",
        "label",
        "11",
        "44",
        "22",
        "33",
        "16x16",
        "1",
        "Abdominal",
        "CT",
        "ct",
    ]
    assert main(["data", "info", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["dataset"] for r in rows] == ["crc", "organs_axial"] and rows[0]["synthetic"]


def test_bench_runs(synth_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "bench", str(synth_root), "--image-size", "32", "--limit", "20"]
    assert main(argv + ["--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images_mimeta"] == 20 and result["images_medzoo"] == 108
    assert result["identical_pixels"] is True and result["ratio"] > 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["data", "info", "{tmp}/nowhere"], "does not exist"),
        (["data", "info", "{tmp}"], "no datasets in"),
        (["data", "synth", "{tmp}/x", "--datasets", "mnist"], "cannot synthesise mnist"),
        (["data", "synth", "{tmp}/x", "--size", "0"], "--size 0"),
        (["data", "bench", "{root}", "--dataset", "crcx"], "'crcx' not found.*crc, organs_axial"),
        (["data", "bench", "{root}", "--split", "tset"], "split 'tset' not found"),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str], expected: str, synth_root: Path, tmp_path: Path, capsys
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{root}", str(synth_root)) for a in argv]
    assert main(argv) == 2
    import re

    assert re.search(expected, _one_error_line(capsys))


def test_fetch_offline_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    def no_network(request, timeout=None):  # noqa: ANN001
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(fetch, "_urlopen", no_network)
    assert main(["data", "fetch", "crc", "--root", str(tmp_path / "r")]) == 2
    line = _one_error_line(capsys)
    assert "by hand" in line and "zenodo.org/records/7884735" in line
