"""The inference benchmark on CPU: tables written, providers reported honestly, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medzoo.cli import main
from medzoo.export import bench

NAME = "t-bench-r18"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 32 px backbone registered in a module-wide zoo home, and its export (made once)."""
    import timm

    from medzoo.export.onnx import export_model
    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry

    home = tmp_path_factory.mktemp("bench-home")
    export_dir = tmp_path_factory.mktemp("bench-export")
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDZOO_HOME", str(home))
        model = timm.create_model("resnet18", num_classes=0)
        save_entry(ZooEntry(name=NAME, input_size=(3, 32, 32)), model.state_dict())
        export_model(NAME, export_dir)
    return home, export_dir


@pytest.fixture
def backbone(shared: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MEDZOO_HOME", str(shared[0]))
    return NAME


def test_bench_writes_tables_and_never_claims_a_missing_gpu(
    backbone: str, shared: tuple[Path, Path], tmp_path: Path
) -> None:
    report = bench.run_bench(
        backbone,
        batch_sizes=(1, 3),
        providers=("cpu", "cuda", "tensorrt"),
        out=tmp_path / "report",
        export_dir=shared[1],
        iterations=2,
        warmup=1,
    )
    saved = json.loads((tmp_path / "report" / "bench.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    backends = {(r["backend"], r["batch_size"]) for r in report["results"]}
    for name in ("torch-eager", "torch-channels-last", "ort-cpu"):
        assert {(name, 1), (name, 3)} <= backends
    for row in report["results"]:
        assert row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"] and row["throughput"] > 0
        assert row["iterations"] == 2
        if row["backend"] == "torch-eager":
            assert row["speedup_vs_torch_eager"] == pytest.approx(1.0)
        if row["backend"].startswith("ort-"):  # the provider that really ran, first in the list
            expected = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[
                row["device"]
            ]
            assert row["providers"][0] in (expected, "TensorrtExecutionProvider")
    if not torch.cuda.is_available():
        assert report["providers_ran"] == ["CPUExecutionProvider"]
        assert {"ort-cuda", "ort-tensorrt"} <= set(report["unavailable"])
        assert all(r["device"] == "cpu" for r in report["results"])
    table = (tmp_path / "report" / "bench.md").read_text()
    assert "| ort-cpu | cpu | fp32 | 3 |" in table and "Providers that ran" in table
    if not torch.cuda.is_available():
        assert "Not available here" in table and "ort-cuda" in table
    # roofline: the model's FLOPs and this run's GEMM ceiling give each row its fraction
    roof = saved["roofline"]
    assert roof["flops_per_image"] > 1e7 and roof["cpu_ceilings"]["fp32_gflops"] > 0
    assert roof["cpu_ceilings"]["threads"] == saved["threads"]
    for row in saved["results"]:
        gflops = roof["flops_per_image"] * row["throughput"] / 1e9
        assert row["gflops"] == pytest.approx(gflops)
        assert row["fraction_of_ceiling"] == pytest.approx(
            gflops / roof["cpu_ceilings"][row["ceiling"]]
        )
    assert "ISA: " in table and "of ceiling" in table
    assert any(g["goal"].startswith("onnxruntime fp32 >= 70%") for g in roof["goals"])


def test_bench_cli_prints_the_table(
    backbone: str, shared: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["bench", backbone, "--batch-sizes", "2", "--iterations", "1", "--warmup", "0",
         "--out", str(tmp_path / "r"), "--export-dir", str(shared[1])]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "| torch-eager | cpu | fp32 | 2 |" in out and (tmp_path / "r" / "bench.md").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", NAME, "--providers", "cpu,tpu"], "unknown provider tpu"),
        (["bench", NAME, "--batch-sizes", "0,8"], "--batch-sizes"),
        (["bench", "no-such-model"], "unknown zoo model"),
        (["bench", "pretrain"], "needs a recipe"),
        (["bench", NAME, "extra.toml"], "unexpected argument"),
    ],
)
def test_bad_bench_arguments_give_one_line(
    argv: list[str], message: str, backbone: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path / "r"), "--export-dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_bench_pretrain_calls_the_training_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pretrain = pytest.importorskip("medzoo.pretrain")
    seen = {}

    def fake_benchmark(cfg, steps, data_root=None, synthetic=False, breakdown=False):  # noqa: ANN001, ANN202
        seen.update(cfg=cfg, steps=steps, data_root=data_root, synthetic=synthetic)
        return {"steps_per_s": 1.5}

    monkeypatch.setattr(pretrain, "benchmark", fake_benchmark)
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "bt-test"\n[training]\nbatch_size = 8\n')
    code = main(
        [
            "bench",
            "pretrain",
            str(recipe),
            "--steps",
            "3",
            "--data-root",
            "d",
            "--set",
            "training.batch_size=4",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"steps_per_s": 1.5}
    assert seen["steps"] == 3 and seen["data_root"] == "d" and seen["cfg"].training.batch_size == 4
    assert seen["synthetic"] is False
