"""One CLI grammar: --data-root with the MEDZOO_DATA fallback wherever data is read, --json
that works where accepted, refused flags, list PATTERN, shell completion from the parser."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medzoo.cli import build_parser, main
from medzoo.completion import command_words

# Every leaf command that reads (or unpacks or imports into) a MIMeta root.
READS_DATA = {
    "data fetch", "data info", "data bench", "data import", "pretrain", "evaluate", "train-head",
    "export",
    "bench",
}  # fmt: skip
OLD_SPELLINGS = ("--root", "--calibration-data")


def _leaves(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.update(_leaves(child, f"{path} {name}".strip()))
    return out or {path: parser}


def _visible_options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings
    }  # fmt: skip


def test_every_data_reading_command_takes_data_root_with_the_env_fallback() -> None:
    leaves = _leaves(build_parser())
    assert set(leaves) >= READS_DATA, set(leaves)
    for path, parser in leaves.items():
        options = _visible_options(parser)
        positional = [a.metavar or a.dest for a in parser._actions if not a.option_strings]
        root_like = {o for o in options if "root" in o or "data" in o} - {"--data-root"}
        assert not root_like & set(OLD_SPELLINGS), (path, root_like)
        assert "ROOT" not in positional, (path, positional)  # no positional data roots left
        if path in READS_DATA:
            (action,) = [a for a in parser._actions if "--data-root" in a.option_strings]
            assert action.dest == "data_root" and action.default is None, path
            assert "$MEDZOO_DATA" in action.help, path
        else:
            assert "--data-root" not in options, path


def test_data_info_and_bench_fall_back_to_medzoo_data(
    synth_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEDZOO_DATA", str(synth_root))
    assert main(["data", "info", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["dataset"] for r in rows} >= {"crc", "organs_axial"}
    assert main(["data", "info", str(synth_root)]) == 0  # the README's old spelling still works
    assert "organs_axial" in capsys.readouterr().out
    monkeypatch.setenv("MEDZOO_DATA", str(synth_root / "nowhere"))
    assert main(["data", "info"]) == 2
    assert str(synth_root / "nowhere") in capsys.readouterr().err
    assert main(["data", "info", "--data-root", str(synth_root), str(synth_root / "x")]) == 2
    assert "two data roots" in capsys.readouterr().err


def test_data_fetch_unpacks_into_medzoo_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "env-root"
    monkeypatch.setenv("MEDZOO_DATA", str(root))
    missing = tmp_path / "missing.zip"
    assert main(["data", "fetch", "crc", "--source", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medzoo: error:") and err.count("\n") == 1
    assert not (root / "crc").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "in1k-r18", "--steps", "5"], "--steps does nothing for `medzoo bench NAME`"),
        (["bench", "in1k-r18", "--synthetic"], "--synthetic does nothing"),
        (["bench", "in1k-r18", "--data-root", "x"], "--data-root does nothing"),
        (["bench", "pretrain", "r.toml", "--providers", "cpu"], "--providers does nothing"),
        (["bench", "pretrain", "r.toml", "--iterations", "3", "--compile"], "do nothing"),
    ],
)
def test_flags_that_do_nothing_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_list_pattern_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "bt-*", "--json"]) == 0
    names = [e["name"] for e in json.loads(capsys.readouterr().out)]
    assert names == ["bt-crc-r18", "bt-liver-r18"]
    assert main(["list", "*liver*", "in1k-*"]) == 0
    out = capsys.readouterr().out
    assert "bt-liver-r18" in out and "in1k-r18" in out and "bt-crc-r18" not in out
    assert main(["list", "nothing-*"]) == 2
    assert "no zoo model matches" in capsys.readouterr().err


def test_completion_script_covers_the_parser(tmp_path: Path) -> None:
    table = command_words(build_parser())
    assert {"data", "data fetch", "export", "list", "completion"} <= set(table)
    assert "--data-root" in table["data fetch"] and "--root" not in table["data fetch"]
    script = subprocess.run(
        [sys.executable, "-m", "medzoo", "completion", "bash"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = tmp_path / "medzoo.bash"
    path.write_text(script)
    probe = (
        f"source {path}; COMP_WORDS=(medzoo data fe); COMP_CWORD=2; _medzoo_complete; "
        'echo "${COMPREPLY[@]}"; COMP_WORDS=(medzoo export x --data); COMP_CWORD=3; '
        '_medzoo_complete; echo "${COMPREPLY[@]}"'
    )
    lines = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert lines == ["fetch", "--data-root"]
    zsh = subprocess.run(
        [sys.executable, "-m", "medzoo", "completion", "zsh"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert zsh.startswith("autoload -U +X bashcompinit")
