"""The machine's own limits, measured in the run that quotes them: ISA, GEMM ceilings.

Speed goals are fractions of these ceilings (docs/benchmarks.md), so they hold on any CPU:

- :func:`isa` reads the vector extensions from ``/proc/cpuinfo`` (AVX2, FMA, AVX-512, VNNI, AMX);
- :func:`cpu_ceilings` times square GEMMs with the given number of threads: fp32 in torch and in
  onnxruntime (``MatMul``; the better of the two is the ceiling), and int8 in onnxruntime
  (``MatMulInteger``, uint8 x int8 -> int32, the kernels its int8 convolutions use);
- :func:`gpu_ceilings` times bf16, fp16 and fp32 (TF32 off) matrix products on CUDA.

``python -m medzoo.machine --json --out env.json`` writes all of it with the library versions
(bench/gpu.sh's first step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ISA_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share a core's FMA units)."""
    allowed = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    try:
        cores, current = set(), {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("physical id", "core id"):
                current[key] = value.strip()
            elif not key and current:
                cores.add((current.get("physical id"), current.get("core id")))
                current = {}
        if current:
            cores.add((current.get("physical id"), current.get("core id")))
        found = len(cores) if cores and None not in next(iter(cores)) else allowed
    except OSError:
        found = allowed
    return max(1, min(found, allowed))


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    import platform

    return platform.processor() or "unknown"


def isa(cpuinfo: str | None = None) -> dict[str, Any]:
    """The vector extensions of this CPU and a one-line summary (``AVX2+FMA``, ``+VNNI``...)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    found = {name: flag in flags for name, flag in ISA_FLAGS.items()}
    vnni = found["avx512_vnni"] or found["avx_vnni"]
    amx = found["amx_int8"]
    parts = [p for p, ok in (("AVX2", found["avx2"]), ("FMA", found["fma"])) if ok]
    parts += ["AVX-512"] if found["avx512f"] else []
    parts += ["VNNI"] if vnni else []
    parts += ["AMX"] if amx else []
    return {
        "flags": found,
        "summary": "+".join(parts) or "no AVX2",
        "int8_dot_product": bool(vnni or amx),  # the int8 goal is 2.5x with these, 1.5x without
    }


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _ort_gemm(kind: str, size: int, threads: int) -> Callable[[], Any]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if kind == "fp32":
        a_type = b_type = TensorProto.FLOAT
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        out_type = TensorProto.FLOAT
        rng = np.random.default_rng(0)
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
    else:
        a_type, b_type, out_type = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        rng = np.random.default_rng(0)
        a = rng.integers(0, 255, (size, size), dtype=np.uint8)
        b = rng.integers(-127, 127, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [node],
        "gemm",
        [
            helper.make_tensor_value_info("a", a_type, [size, size]),
            helper.make_tensor_value_info("b", b_type, [size, size]),
        ],
        [helper.make_tensor_value_info("c", out_type, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(
        onnx.ModelProto.SerializeToString(model), options, providers=["CPUExecutionProvider"]
    )
    return lambda: session.run(None, {"a": a, "b": b})


def cpu_ceilings(threads: int, size: int = 1024, repeats: int = 10) -> dict[str, Any]:
    """GEMM GFLOP/s (int8: GOP/s) of ``size``-square products on ``threads`` threads."""
    import torch

    flops = 2.0 * size**3
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        torch_fp32 = flops / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9
    finally:
        torch.set_num_threads(before)
    out: dict[str, Any] = {"threads": threads, "gemm_size": size, "fp32_gflops_torch": torch_fp32}
    with contextlib.suppress(ImportError):
        out["fp32_gflops_ort"] = (
            flops / _best_seconds(_ort_gemm("fp32", size, threads), repeats) / 1e9
        )
        out["int8_gops_ort"] = (
            flops / _best_seconds(_ort_gemm("int8", size, threads), repeats) / 1e9
        )
    out["fp32_gflops"] = max(torch_fp32, out.get("fp32_gflops_ort", 0.0))
    return out


def gpu_ceilings(size: int = 8192, repeats: int = 10) -> dict[str, Any]:
    """Matrix-product TFLOP/s on the current CUDA device (empty without one)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(), "gemm_size": size}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dtype in (
            ("bf16", torch.bfloat16),
            ("fp16", torch.float16),
            ("fp32", torch.float32),
        ):
            a = torch.randn(size, size, device="cuda", dtype=dtype)
            b = torch.randn(size, size, device="cuda", dtype=dtype)

            def run(a: Any = a, b: Any = b) -> None:
                torch.mm(a, b)
                torch.cuda.synchronize()

            out[f"{name}_tflops"] = 2.0 * size**3 / _best_seconds(run, repeats) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def machine_report(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """ISA, CPU ceilings with ``threads`` (default: physical cores), GPU ceilings on CUDA."""
    from medzoo.provenance import provenance

    threads = threads or physical_cores()
    report = {"cpu": cpu_name(), "isa": isa(), "cpu_ceilings": cpu_ceilings(threads)}
    if device in ("auto", "cuda"):
        report["gpu_ceilings"] = gpu_ceilings()
    return {**report, **provenance()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medzoo.machine", description="ISA and GEMM ceilings of this machine"
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")
    args = parser.parse_args(argv)
    report = machine_report(args.threads, args.device)
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text if args.json else f"{report['cpu']}: {report['isa']['summary']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
