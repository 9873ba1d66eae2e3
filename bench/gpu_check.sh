#!/usr/bin/env bash
# One prepared GPU check (run on a CUDA machine): encoder throughput by precision and batch,
# the whole pipeline on CUDA + bf16 with 1 and 4 worker processes, and scoring. JSON to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'open_clip', open_clip.__version__)" | tee -a "$OUT/gpu.txt"
timeout 120 python3 bench/encoder.py --device cuda --batches 32,128,256,512 --images 4096 \
  > "$OUT/encoder.json" 2> "$OUT/encoder.err"; cat "$OUT/encoder.json"
timeout 180 python3 bench/pipeline.py --device cuda --images 2048 --batch-size 128 \
  --decode-images 40 > "$OUT/pipeline-w1.json" 2> "$OUT/pipeline-w1.err"; cat "$OUT/pipeline-w1.json"
timeout 180 python3 bench/pipeline.py --device cuda --images 4096 --batch-size 128 --workers 4 \
  --decode-images 10 > "$OUT/pipeline-w4.json" 2> "$OUT/pipeline-w4.err"; cat "$OUT/pipeline-w4.json"
timeout 45 python3 bench/scoring.py > "$OUT/scoring.json" 2>&1; tail -c 600 "$OUT/scoring.json"
tail -n 5 "$OUT"/*.err
