"""`medzoo bench pretrain --breakdown`, the machine's ceilings, and `bench/gpu.sh --dry-run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
CPUINFO_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
CPUINFO_AMX = "flags\t\t: avx2 fma avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"


def test_breakdown_times_every_phase_and_the_bare_loop(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "pretrain", str(ROOT / "recipes" / "pretrain-crc.toml"), "--synthetic"]
    argv += ["--steps", "2", "--breakdown", "--json", "--set", "data.image_size=32"]
    assert main([*argv, "--set", "training.batch_size=8"]) == 0
    result = json.loads(capsys.readouterr().out)
    phases = result["breakdown"]["phase_seconds"]
    assert set(phases) == {"data", "augment", "forward", "loss", "backward", "optimizer"}
    assert all(seconds > 0 for seconds in phases.values())
    assert sum(result["breakdown"]["phase_fractions"].values()) == pytest.approx(1.0)
    bare = result["breakdown"]["bare_loop_samples_per_s"]
    assert result["loop_efficiency"] == pytest.approx(result["samples_per_s"] / bare)
    assert result["loop_efficiency_met"] == (result["loop_efficiency"] >= 0.9)


def test_isa_reads_cpuinfo() -> None:
    from medzoo.machine import isa

    avx2 = isa(CPUINFO_AVX2)
    assert avx2["summary"] == "AVX2+FMA" and not avx2["int8_dot_product"]
    amx = isa(CPUINFO_AMX)
    assert amx["summary"] == "AVX2+FMA+AVX-512+VNNI+AMX" and amx["int8_dot_product"]


def test_gpu_script_dry_run_runs_every_step_on_cpu(tmp_path: Path) -> None:
    """bench/gpu.sh --dry-run: every step at tiny sizes, `import mimeta` blocked as on the device."""
    out = tmp_path / "gpu"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env["MEDZOO_HOME"] = str(tmp_path / "home")
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    failed = [s["step"] for s in steps if s["rc"] != 0]
    assert run.returncode == 0 and not failed, (failed, run.stderr[-3000:])
    names = [s["step"] for s in steps]
    assert names[:2] == ["environment", "gpu-tests"] and "inference-bench" in names
    assert any(name.startswith("pretrain-") for name in names)
    env_report = json.loads((out / "env.json").read_text())
    assert env_report["cpu_ceilings"]["fp32_gflops"] > 0 and "summary" in env_report["isa"]
    pretrain = [json.loads(line) for line in (out / "pretrain.jsonl").read_text().splitlines()]
    assert pretrain and all("loop_efficiency" in r for r in pretrain)
    assert any(r["compile_augment"] for r in pretrain)  # augment.compile, proven on CPU
    bench = json.loads((out / "onnx" / "bench.json").read_text())
    assert {"ort-cuda", "ort-tensorrt"} <= set(bench["unavailable"]) and bench["roofline"]
    assert json.loads((out / "onnx" / "export.json").read_text())["parity"]["fp16"]
    # the device can return at most 8 files, two folders down
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)
