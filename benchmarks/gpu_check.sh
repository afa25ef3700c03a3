#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (no network there; python3 there holds CUDA torch).
# Wheels for what its image lacks (duckdb, diffusers) travel in .whl/ (see README "GPU checks").
# Writes every log under $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/device.txt"

echo "== ImageNet-64 full-size network, random weights: hooks + store writes vs bare"
timeout 200 python3 benchmarks/bench_generate.py --full-size --device cuda --num-samples 512 --batch-size 64 2>&1 \
  | tee "$OUT/bench_generate_imagenet_gpu.txt"
echo "== demo model on the GPU"
timeout 60 python3 benchmarks/bench_generate.py --device cuda 2>&1 | tee "$OUT/bench_generate_demo_gpu.txt"
echo "== SDXL-size UNet at 1024 px, float16, random weights"
timeout 240 python3 benchmarks/gpu_sdxl_throughput.py 2>&1 | tee "$OUT/gpu_sdxl_throughput.txt"
echo "== done"
