#!/usr/bin/env bash
# One GPU check in one go: the GPU tests, then a sized `mvg-rt bench` on CUDA, results under
# benchmarks/results/<gpu-name>/. Needs a CUDA machine with the project installed
# (pip install -e ".[gpu,dev]", see docs/deploying-gpu.md); run it from the repository root:
#
#     bash benchmarks/gpu_check.sh                      # torch FP16 eager + CUDA graphs
#     MVG_GPU_BACKENDS="torch ort trt" bash benchmarks/gpu_check.sh   # also ONNX Runtime CUDA and TensorRT
#
# Sized for under 8 minutes on an H100 with the default backends (an estimate from the H200 run's
# timings in ../shared/gpu-runs; this script has not run on a GPU yet): real SD 1.4 + SEINE
# architectures with random weights at 512x512 (SEINE at 16 frames), every component FP16 eager
# and with CUDA graphs (5 timed calls, 10 s budget per row), one PIE round vs diffusers img2img,
# 2 PIE rounds of 50 steps and one transition clip of 16 frames x 20 steps. Adding ort/trt exports
# and builds every component first (about 10 more minutes, cached under ~/.cache/mvg-rt/bench).
# The bench stops after MVG_GPU_BENCH_TIMEOUT seconds (default 420); the tests' result, the
# bench's and the versions are written to gpu_check.txt whatever happens.
set -uo pipefail

cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null || ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA device visible to PyTorch (nvidia-smi and torch.cuda.is_available()); nothing run" >&2
    exit 2
fi

gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
slug=$(echo "$gpu_name" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
out="benchmarks/results/${slug}"
mkdir -p "$out"
backends=${MVG_GPU_BACKENDS:-torch}
backend_flags=()
for b in $backends; do backend_flags+=(--backend "$b"); done
started=$(date +%s)

echo "== gpu_check on ${gpu_name} -> ${out}"
python -m pytest -m gpu tests/test_gpu.py -rs -q 2>&1 | tee "$out/pytest_gpu.txt"
tests_rc=${PIPESTATUS[0]}

timeout "${MVG_GPU_BENCH_TIMEOUT:-420}" mvg-rt bench --device cuda "${backend_flags[@]}" --cuda-graphs \
    --resolution 512 --frames 16 --repeat 5 --warmup 1 --row-budget 10 \
    --e2e --peers --in-process --rounds 2 --steps 50 --transition-frames 16 \
    --transition-steps 20 --e2e-repeat 2 --overhead-repeat 2 --out "$out" 2>&1 | tee "$out/bench_log.txt"
bench_rc=${PIPESTATUS[0]}

{
    echo "gpu: ${gpu_name}"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "backends: ${backends}"
    echo "pytest -m gpu exit code: ${tests_rc}"
    echo "mvg-rt bench exit code: ${bench_rc} (124: stopped by the timeout)"
    echo "wall seconds: $(( $(date +%s) - started ))"
    python -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} | tee "$out/gpu_check.txt"

[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
