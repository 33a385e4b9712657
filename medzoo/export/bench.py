"""Latency and throughput of a zoo model in torch and in onnxruntime's providers.

Backends (each at every batch size; warm-up iterations are run and discarded):

- ``torch-eager`` (fp32, NCHW) - the reference every ratio is taken against;
- ``torch-channels-last``, and ``torch-compile`` when asked (``compile=True``);
- ``ort-cpu`` (fp32; graph optimisation ORT_ENABLE_ALL - which includes the NCHWc layout
  transform, intra-op threads = physical cores, sequential execution) and ``ort-cpu-int8`` (the
  QDQ model, when ``medzoo export --int8`` wrote one);
- ``ort-cuda`` (IOBinding: input copied to the GPU once, output left there; the fp16 model when
  exported) and ``ort-tensorrt`` (fp16 engines, cached), when requested.

A provider counts only if ``session.get_providers()`` says it ran: onnxruntime-gpu silently falls
back to CPU when CUDA or TensorRT cannot load, and that is reported as "not available", never
as a CUDA figure.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.errors import MedzooError
from medzoo.machine import cpu_name as cpu_name
from medzoo.machine import physical_cores as physical_cores

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"


def parse_providers(providers: Sequence[str]) -> list[str]:
    unknown = [p for p in providers if p not in PROVIDERS]
    if unknown or not providers:
        raise MedzooError(
            f"unknown provider {', '.join(unknown) or '(none)'}: choose from {', '.join(PROVIDERS)}"
        )
    return list(dict.fromkeys(providers))


def parse_batch_sizes(batch_sizes: Sequence[int] | str) -> list[int]:
    items = batch_sizes.split(",") if isinstance(batch_sizes, str) else list(batch_sizes)
    try:
        sizes = [int(v) for v in items]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise MedzooError(f"--batch-sizes {batch_sizes!r}: give positive integers like 1,8,32")
    return sizes


# --------------------------------------------------------------------------- timing


def time_fn(fn: Callable[[], Any], *, iterations: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn``, after ``warmup`` discarded calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list[float], batch_size: int) -> dict[str, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * p95,
        "throughput": batch_size * len(times) / sum(times),  # images per second
        "iterations": len(times),
    }


# --------------------------------------------------------------------------- torch


def torch_runners(model: Any, *, compile: bool, device: str) -> dict[str, Callable[[Any], Any]]:
    """name -> function of a float batch (already on ``device``)."""
    import copy

    import torch

    runners: dict[str, Callable[[Any], Any]] = {}
    eager = model.to(device).eval()
    if device == "cpu":
        runners["torch-eager"] = eager
    last = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    runners["torch-channels-last" if device == "cpu" else "torch-cuda-fp16-channels-last"] = last
    if compile:
        runners["torch-compile" if device == "cpu" else "torch-cuda-compile"] = torch.compile(last)
    if device != "cpu":
        for key in list(runners):
            module = runners[key]
            runners[key] = _autocast(module)
    return runners


def _autocast(module: Any) -> Callable[[Any], Any]:
    import torch

    def run(x: Any) -> Any:
        with torch.autocast("cuda", dtype=torch.float16):
            return module(x)

    return run


def bench_torch(
    model: Any,
    images: np.ndarray,
    meta: dict[str, Any],
    batch_sizes: Sequence[int],
    *,
    compile: bool,
    device: str,
    iterations: int,
    warmup: int,
) -> list[dict[str, Any]]:
    import torch

    from medzoo.export.runtime import normalize

    rows = []
    data = normalize(images, meta["mean"], meta["std"]).to(device)
    for backend, run in torch_runners(model, compile=compile, device=device).items():
        for batch_size in batch_sizes:
            x = data[:batch_size]
            if "channels-last" in backend or "compile" in backend:
                x = x.contiguous(memory_format=torch.channels_last)

            def step(x: Any = x, run: Callable[[Any], Any] = run) -> None:
                with torch.inference_mode():
                    run(x)
                if device != "cpu":
                    torch.cuda.synchronize()

            stats = summarise(time_fn(step, iterations=iterations, warmup=warmup), batch_size)
            rows.append(
                {
                    "backend": backend,
                    "device": device,
                    "precision": "fp16" if device != "cpu" else "fp32",
                    "batch_size": batch_size,
                    **stats,
                }
            )
    return rows


# --------------------------------------------------------------------------- onnxruntime


def ort_session(
    path: Path,
    provider: str,
    *,
    threads: int,
    trt_cache: Path | None = None,
    max_batch: int = 32,
    input_shape: Sequence[int] = (),
) -> tuple[Any | None, str]:
    """A tuned session for ``provider`` (cpu, cuda, tensorrt), or (None, why it did not run)."""
    import onnxruntime as ort

    if PROVIDERS[provider] not in ort.get_available_providers():
        return None, f"this onnxruntime build has no {PROVIDERS[provider]}"
    options = ort.SessionOptions()
    options.log_severity_level = 4 if provider != "cpu" else 3  # fallbacks are reported below
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of convolutions
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    chain: list[Any] = []
    if provider == "tensorrt":
        shape = "x".join(str(v) for v in input_shape)
        chain.append(
            (
                "TensorrtExecutionProvider",
                {
                    "trt_fp16_enable": True,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(trt_cache or path.parent / "trt_cache"),
                    "trt_profile_min_shapes": f"input:1x{shape}",
                    "trt_profile_opt_shapes": f"input:{max_batch}x{shape}",
                    "trt_profile_max_shapes": f"input:{max_batch}x{shape}",
                },
            )
        )
    if provider in ("cuda", "tensorrt"):
        # NHWC convolutions use the tensor cores without layout transposes around each conv
        chain.append(("CUDAExecutionProvider", {"prefer_nhwc": "1"}))
    chain.append("CPUExecutionProvider")
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):  # onnxruntime prints its EP fallback
            session = ort.InferenceSession(str(path), options, providers=chain)
    except Exception as err:  # a provider that cannot even fall back: not available
        return None, str(err).strip().splitlines()[0]
    if session.get_providers()[0] != PROVIDERS[provider]:
        reason = next(
            (ln for ln in captured.getvalue().splitlines() if ln.startswith("EP Error ")), ""
        )
        return (
            None,
            f"{PROVIDERS[provider]} requested, onnxruntime ran {session.get_providers()} {reason}".strip(),
        )
    return session, ""


def bench_ort(
    session: Any,
    feed: np.ndarray,
    batch_sizes: Sequence[int],
    *,
    device: str,
    iterations: int,
    warmup: int,
) -> list[dict[str, Any]]:
    import onnxruntime as ort

    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    rows = []
    for batch_size in batch_sizes:
        x = np.ascontiguousarray(feed[:batch_size])
        if device == "cpu":

            def step(x: np.ndarray = x) -> None:
                session.run([output_name], {input_name: x})

        else:  # IOBinding: the batch lives on the GPU, the output stays there
            binding = session.io_binding()
            binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            binding.bind_output(output_name, "cuda")

            def step(binding: Any = binding) -> None:
                session.run_with_iobinding(binding)

        stats = summarise(time_fn(step, iterations=iterations, warmup=warmup), batch_size)
        rows.append({"batch_size": batch_size, **stats})
    return rows


# --------------------------------------------------------------------------- the benchmark


def _ort_backends(export_dir: Path, providers: Sequence[str]) -> list[tuple[str, str, str, Path]]:
    """(backend, provider, precision, file) for every ONNX run the export folder allows."""
    from medzoo.export.runtime import FP16_FILE, INT8_FILE, MODEL_FILE

    out = []
    if "cpu" in providers:
        out.append(("ort-cpu", "cpu", "fp32", export_dir / MODEL_FILE))
        if (export_dir / INT8_FILE).is_file():
            out.append(("ort-cpu-int8", "cpu", "int8", export_dir / INT8_FILE))
    if "cuda" in providers:
        fp16 = (export_dir / FP16_FILE).is_file()
        out.append(
            (
                "ort-cuda",
                "cuda",
                "fp16" if fp16 else "fp32",
                export_dir / (FP16_FILE if fp16 else MODEL_FILE),
            )
        )
    if "tensorrt" in providers:  # TensorRT builds its own fp16 engine from the fp32 graph
        out.append(("ort-tensorrt", "tensorrt", "fp16", export_dir / MODEL_FILE))
    return out


def _ensure_export(name: str, export_dir: Path, entry: Any) -> None:
    from medzoo.export.onnx import export_model
    from medzoo.export.runtime import MODEL_FILE, read_metadata, verify_onnx

    path = export_dir / MODEL_FILE
    if not path.is_file():
        export_model(name, export_dir)
    verify_onnx(path)
    if read_metadata(path).get("sha256", "") != (entry.sha256 or ""):
        raise MedzooError(
            f"{path} was exported from other weights than {name}; run `medzoo export {name} --out {export_dir}` again"
        )


# long: validation, export, every backend and the report as one sequence over shared state
def run_bench(
    name: str,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    providers: Sequence[str] = ("cpu",),
    out: str | os.PathLike[str] | None = None,
    export_dir: str | os.PathLike[str] | None = None,
    iterations: int = 20,
    warmup: int = 3,
    compile: bool = False,
    torch_baseline: bool = True,
) -> dict[str, Any]:
    """Benchmark zoo model ``name``; write ``bench.json`` and ``bench.md`` to ``out``.

    Args:
        name: a zoo name; its export (``export_dir``, default ``exports/NAME``) is made first
            when missing (fp32); fp16 and int8 files found there are benchmarked too.
        batch_sizes: latency and throughput are measured at each.
        providers: ``cpu``, ``cuda``, ``tensorrt``; those that cannot run here are listed under
            ``unavailable`` with the reason.
        out: folder for the reports (default: the export folder).
        iterations, warmup: timed and discarded calls per (backend, batch size).
        compile: add ``torch.compile`` rows.
        torch_baseline: run the torch rows (ratios are taken against ``torch-eager``).
    """
    import torch

    from medzoo.export.onnx import default_export_dir, entry_metadata
    from medzoo.export.parity import random_images
    from medzoo.export.runtime import normalize, read_metadata, verify_onnx
    from medzoo.provenance import atomic_write_json, atomic_write_text, provenance
    from medzoo.zoo.index import load, model_info

    providers = parse_providers(providers)
    batch_sizes = parse_batch_sizes(batch_sizes)
    if iterations < 1 or warmup < 0:
        raise MedzooError("--iterations must be >= 1 and --warmup >= 0")
    entry = model_info(name)
    export_dir = Path(export_dir) if export_dir is not None else default_export_dir(name)
    out_dir = Path(out) if out is not None else export_dir
    _ensure_export(name, export_dir, entry)
    meta = entry_metadata(entry)
    threads = physical_cores()
    images = random_images(meta["input_size"], max(batch_sizes), seed=0)
    rows: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the same cores for torch and onnxruntime
    try:
        if torch_baseline:
            model = load(name)
            devices = ["cpu"] + (
                ["cuda"] if "cuda" in providers and torch.cuda.is_available() else []
            )
            for device in devices:
                rows += bench_torch(
                    model, images, meta, batch_sizes,
                    compile=compile, device=device, iterations=iterations, warmup=warmup,
                )  # fmt: skip
        for backend, provider, precision, path in _ort_backends(export_dir, providers):
            verify_onnx(path)  # fp16 and int8 files too: every file that runs is checked
            session, why = ort_session(
                path,
                provider,
                threads=threads,
                trt_cache=out_dir / "trt_cache",
                max_batch=max(batch_sizes),
                input_shape=meta["input_size"],
            )
            if session is None:
                unavailable[backend] = why
                continue
            uint8 = read_metadata(path).get("include_preprocessing") == "true"
            feed = images if uint8 else normalize(images, meta["mean"], meta["std"]).numpy()
            device = "cpu" if provider == "cpu" else "cuda"
            for row in bench_ort(
                session, feed, batch_sizes, device=device, iterations=iterations, warmup=warmup
            ):
                rows.append(
                    {
                        "backend": backend,
                        "device": device,
                        "precision": precision,
                        "providers": session.get_providers(),
                        "file": path.name,
                        **row,
                    }
                )
    finally:
        torch.set_num_threads(previous_threads)
    _add_speedups(rows)
    roofline = _roofline(rows, load(name), meta, threads, providers)
    report = {
        "name": name,
        "input_size": meta["input_size"],
        "batch_sizes": batch_sizes,
        "requested_providers": providers,
        "providers_ran": sorted({p for r in rows for p in r.get("providers", [])[:1]}),
        "unavailable": unavailable,
        "threads": threads,
        "cpu": cpu_name(),
        "iterations": iterations,
        "warmup": warmup,
        "results": rows,
        "roofline": roofline,
        **provenance(),
    }
    atomic_write_json(out_dir / BENCH_JSON, report)
    atomic_write_text(out_dir / BENCH_MD, markdown_table(report))
    report["out_dir"] = str(out_dir)
    return report


def flops_per_image(model: Any, input_size: Sequence[int]) -> float:
    """Floating-point operations of one forward pass (2 per multiply-add), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(torch.zeros(1, *input_size))
    return float(counter.get_total_flops())


def _roofline(
    rows: list[dict[str, Any]], model: Any, meta: Any, threads: int, providers: Sequence[str]
) -> dict[str, Any]:
    """Each row's GFLOP/s as a fraction of this machine's GEMM ceiling, measured now."""
    from medzoo.machine import cpu_ceilings, gpu_ceilings, isa

    flops = flops_per_image(model, meta["input_size"])
    cpu = cpu_ceilings(threads)
    gpu = gpu_ceilings(size=4096) if any(r["device"] == "cuda" for r in rows) else {}
    for row in rows:
        row["gflops"] = flops * row["throughput"] / 1e9
        if row["device"] == "cpu":
            key = "int8_gops_ort" if row["precision"] == "int8" else "fp32_gflops"
        else:
            key = {"fp16": "fp16_tflops", "fp32": "fp32_tflops"}.get(row["precision"], "")
        ceiling = cpu.get(key) or (gpu.get(key, 0.0) * 1e3)
        if ceiling:
            row["ceiling"] = key
            row["fraction_of_ceiling"] = row["gflops"] / ceiling
    machine = isa()
    return {
        "flops_per_image": flops,
        "isa": machine["summary"],
        "isa_flags": machine["flags"],
        "cpu_ceilings": cpu,
        "gpu_ceilings": gpu,
        "goals": _goals(rows, machine["int8_dot_product"]),
    }


def _goals(rows: list[dict[str, Any]], int8_dot_product: bool) -> list[dict[str, Any]]:
    """The CPU goals of docs/benchmarks.md, at the largest batch benchmarked (32 by default)."""
    cpu = [r for r in rows if r["device"] == "cpu"]
    if not cpu:
        return []
    batch = max(r["batch_size"] for r in cpu)
    by = {r["backend"]: r for r in cpu if r["batch_size"] == batch}
    goals = []
    if "ort-cpu" in by:
        fraction = by["ort-cpu"].get("fraction_of_ceiling", 0.0)
        goals.append(
            {"goal": f"onnxruntime fp32 >= 70% of the fp32 GEMM ceiling (batch {batch})",
             "figure": fraction, "met": fraction >= 0.7}
        )  # fmt: skip
    if "ort-cpu" in by and "ort-cpu-int8" in by:
        target = 2.5 if int8_dot_product else 1.5
        ratio = by["ort-cpu-int8"]["throughput"] / by["ort-cpu"]["throughput"]
        goals.append(
            {"goal": f"int8 >= {target}x onnxruntime fp32 (batch {batch}, "
                     f"{'VNNI/AMX' if int8_dot_product else 'no VNNI/AMX'})",
             "figure": ratio, "met": ratio >= target}
        )  # fmt: skip
    return goals


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    eager = {r["batch_size"]: r["throughput"] for r in rows if r["backend"] == "torch-eager"}
    for row in rows:
        if row["batch_size"] in eager:
            row["speedup_vs_torch_eager"] = row["throughput"] / eager[row["batch_size"]]


def markdown_table(report: dict[str, Any]) -> str:
    c, h, w = report["input_size"]
    lines = [
        f"# {report['name']}: {h}x{w} px, {c} channel(s)",
        "",
        f"CPU: {report['cpu']}, {report['threads']} thread(s); {report['iterations']} timed "
        f"iterations after {report['warmup']} warm-up. Providers that ran: "
        f"{', '.join(report['providers_ran']) or 'none'}.",
        "",
        "| backend | device | precision | batch | p50 ms | p95 ms | images/s | x torch eager "
        "| GFLOP/s | of ceiling |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        speedup = f"{r['speedup_vs_torch_eager']:.2f}" if "speedup_vs_torch_eager" in r else "-"
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['precision']} | {r['batch_size']} | "
            f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['throughput']:.1f} | {speedup} | "
            f"{r.get('gflops', float('nan')):.1f} | "
            + (f"{r['fraction_of_ceiling']:.0%} |" if "fraction_of_ceiling" in r else "- |")
        )
    roof = report.get("roofline")
    if roof:
        cpu = roof["cpu_ceilings"]
        lines += [
            "",
            f"ISA: {roof['isa']}. Ceilings measured in this run with {cpu['threads']} thread(s) "
            f"({cpu['gemm_size']}-square GEMM): fp32 {cpu['fp32_gflops']:.1f} GFLOP/s, int8 "
            f"{cpu.get('int8_gops_ort', float('nan')):.1f} GOP/s; the model does "
            f"{roof['flops_per_image'] / 1e9:.3f} GFLOP per image. The machine may be shared: "
            "compare ratios within one run.",
        ]
        for g in roof["goals"]:
            lines.append(f"- {g['goal']}: {g['figure']:.2f} - {'met' if g['met'] else 'not met'}")
    if report["unavailable"]:
        lines += ["", "Not available here:", ""]
        lines += [f"- {backend}: {why}" for backend, why in report["unavailable"].items()]
    return "\n".join(lines) + "\n"
