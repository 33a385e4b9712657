#!/usr/bin/env bash
# ONNX Runtime vs torch on CPU at 224 px (issue 6's speed goals), on a real classifier:
# a linear probe trained on synthetic crc (224 px) over random-r18 features, exported in fp32 and
# int8 (static quantisation chosen by measurement; balanced accuracy on test may drop <= 1 point).
#   bash bench/onnx_cpu.sh            # writes exports/bench-cpu/{bench.json,bench.md}
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-exports/bench-cpu}
MEDZOO=${MEDZOO:-.venv/bin/medzoo}
export MEDZOO_HOME=${MEDZOO_HOME_BENCH:-$WORK/home}
mkdir -p "$WORK"
[ -f "$WORK/data/crc/info.yaml" ] || $MEDZOO data synth "$WORK/data" --datasets crc --size 224 --per-class 40
$MEDZOO train-head random-r18 --dataset crc --data-root "$WORK/data" --name bench-r18-tissue
rm -rf "$WORK/onnx"
# int8 is exported only if it passes its accuracy gate; otherwise fp32 alone is benchmarked
$MEDZOO export bench-r18-tissue --out "$WORK/onnx" --int8 --calibration-data "$WORK/data" --data-root "$WORK/data" \
  || $MEDZOO export bench-r18-tissue --out "$WORK/onnx" --data-root "$WORK/data"
$MEDZOO bench bench-r18-tissue --batch-sizes 1,8,32 --export-dir "$WORK/onnx" --out "$WORK" --iterations 10
