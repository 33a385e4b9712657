#!/usr/bin/env bash
# ONNX Runtime CUDA / TensorRT throughput of a ResNet-18 at 224 px, batch 512, fp16.
# Goal on one H200: >= 30,000 images/s. Writes $OUT/onnx/{bench.json,bench.md,export.json}.
# Random weights: throughput does not depend on their values. Section of bench/gpu.sh.
set -euo pipefail
PY=${PYTHON:-python}
OUT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
export MEDZOO_HOME=$WORK/home
"$PY" -c 'import onnxruntime as ort; print("onnxruntime", ort.__version__, ort.get_available_providers())'
"$PY" - <<'PY'
import timm
from medzoo.zoo.entry import ZooEntry
from medzoo.zoo.index import save_entry
save_entry(ZooEntry(name="gpu-bench-r18"), timm.create_model("resnet18", num_classes=0).state_dict())
PY
# fp32 (parity-checked) + fp16 (for the CUDA provider); TensorRT builds its own fp16 engine
"$PY" -m medzoo export gpu-bench-r18 --out "$WORK/export" --fp16
mkdir -p "$OUT/onnx"
cp "$WORK/export/export.json" "$OUT/onnx/"
"$PY" -m medzoo bench gpu-bench-r18 --export-dir "$WORK/export" --out "$OUT/onnx" \
  --batch-sizes 512 --providers cuda,tensorrt --iterations 50 --warmup 10 --no-torch
rm -rf "$OUT/onnx/trt_cache"  # engines are large and machine-specific
