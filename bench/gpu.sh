#!/usr/bin/env bash
# GPU benchmarks for one device run (H200 in this project): pre-training throughput and the
# ONNX Runtime CUDA/TensorRT inference figures. Results go under $OUT (default ./exports/gpu).
#
#   bash bench/gpu.sh            # on the device machine, from the repository root
#
# The device image has python3 with torch, timm, safetensors, h5py and onnxruntime (CPU build);
# medzoo runs from the checkout via PYTHONPATH, nothing is installed. For the ORT CUDA and
# TensorRT rows carry an onnxruntime-gpu wheel (see bench/gpu_onnx.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-exports/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"

# The gpu-marked tests first (bf16 + channels_last step, CUDA loss and augmentation parity).
timeout 300 $PY -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -20 | tee "$OUT/gpu-tests.txt"

# Pre-training: synthetic uint8 images at 224 px in memory, bf16 + channels_last, batch 256 and
# 1024, eager and torch.compile. Goal: >= 10,000 samples/s, data-wait < 5 %, batch 256 < 8 GB.
for compile in false true; do
  for batch in 256 1024; do
    timeout 240 $PY -m medzoo bench pretrain recipes/pretrain-crc.toml --synthetic --steps 30 \
      --set training.batch_size=$batch --set training.compile=$compile --set training.precision=\"bf16\" \
      --json | tee -a "$OUT/pretrain.jsonl" || echo "{\"batch_size\": $batch, \"compile\": $compile, \"error\": true}" >> "$OUT/pretrain.jsonl"
  done
done

# Inference with ONNX Runtime CUDA / TensorRT (fp16, batch 512).
if [ -f bench/gpu_onnx.sh ]; then
  OUT=$OUT bash bench/gpu_onnx.sh || echo "gpu_onnx.sh failed" | tee -a "$OUT/gpu.txt"
fi
