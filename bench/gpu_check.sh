#!/usr/bin/env bash
# One prepared GPU check (run on a CUDA machine; about 6 minutes): the bare encoder (ViT-B-32 by
# precision, tracing and batch size, two batches in flight), then the whole pipeline in both
# model modes (ViT-B-32 and the tiny test model, which shows what the rest of the pipeline costs
# per image when the accelerator is nearly free), with 1 and 4 worker processes (each takes a
# GPU by its slot on the host), JPEGs decoded on the GPU; CPU decode throughput; scoring.
# Everything lands as JSON in $OUT.
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
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'gpus', torch.cuda.device_count(), 'open_clip', open_clip.__version__)" | tee -a "$OUT/gpu.txt"
run() {  # name timeout command...
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo "== $name (exit $?)"; tail -c 1500 "$OUT/$name.json"
}
run encoder 150 python3 bench/encoder.py --device cuda --precisions bf16,fp16,fp32 \
  --traced on,off --batches 64,256,512,1024 --images 8192
run pipeline-vit-w1 120 python3 bench/pipeline.py --device cuda --images 4096 --batch-size 256 \
  --decode-images 20
run pipeline-vit-w4 120 python3 bench/pipeline.py --device cuda --images 8192 --batch-size 256 \
  --workers 4 --decode-images 5
run pipeline-test-w1 90 python3 bench/pipeline.py --model test --device cuda --images 4096 \
  --batch-size 256 --decode-images 5
run pipeline-test-w4 90 python3 bench/pipeline.py --model test --device cuda --images 8192 \
  --batch-size 256 --workers 4 --decode-images 5
run scoring 45 python3 bench/scoring.py
tail -n 3 "$OUT"/*.err
