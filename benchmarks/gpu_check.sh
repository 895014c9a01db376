#!/usr/bin/env bash
# One GPU check in one go: the GPU tests, a sized `mvg-rt bench` on CUDA, then the paper-default
# simulation at 512 with --transitions fast, with and without --cuda-graphs; results under
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
# The simulations (10 PIE rounds of 50 steps at strength 0.6, 10 DDIM-10 clips of 16 frames, FP16,
# on the bench's random-weight model folder) record their wall time and run.json (timings and the
# step graphs' captures/replays) as simulate-eager.json / simulate-graphs.json.
# The bench stops after MVG_GPU_BENCH_TIMEOUT seconds (default 330) and each simulation after
# MVG_GPU_SIM_TIMEOUT (default 90), so the whole check fits one 10-minute device call; the tests'
# result, the bench's, the simulations' and the versions are written to gpu_check.txt whatever happens.
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

timeout "${MVG_GPU_BENCH_TIMEOUT:-330}" mvg-rt bench --device cuda "${backend_flags[@]}" --cuda-graphs \
    --resolution 512 --frames 16 --repeat 5 --warmup 1 --row-budget 10 \
    --e2e --peers --in-process --rounds 2 --steps 50 --transition-frames 16 \
    --transition-steps 20 --e2e-repeat 2 --overhead-repeat 2 --out "$out" 2>&1 | tee "$out/bench_log.txt"
bench_rc=${PIPESTATUS[0]}

model_dir=$(python -c "from mvg_rt.bench.config import BenchConfig as C; from mvg_rt.bench.models import default_cache_dir, \
model_source; print(model_source(None, C.size, C.seed, default_cache_dir(), lambda _: None).model_dir)")  # the bench's
sim_tmp=$(mktemp -d)
sim_rc=""
for mode in eager graphs; do
    flags=()
    [ "$mode" = graphs ] && flags=(--cuda-graphs)
    sim_started=$(date +%s.%N)
    timeout "${MVG_GPU_SIM_TIMEOUT:-90}" mvg-rt simulate --model-dir "$model_dir" --device cuda --precision fp16 \
        --resolution 512 --prompt "severe cardiomegaly" --transitions fast "${flags[@]}" --out "$sim_tmp/$mode" \
        2>&1 | tail -n 5 | tee -a "$out/simulate_log.txt"
    rc=${PIPESTATUS[0]}
    sim_rc="${sim_rc} ${mode}:${rc}"
    python - "$sim_tmp/$mode/run.json" "$out/simulate-$mode.json" "$sim_started" "$rc" <<'PY'
import json, pathlib, sys, time
run, dest, started, rc = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
record = json.loads(run.read_text()) if run.is_file() else {}
keep = {k: record.get(k) for k in ("pie", "transition", "graphed_loops", "step_graphs", "timings", "backend")}
dest.write_text(json.dumps({"exit_code": rc, "wall_seconds": round(time.time() - started, 2), **keep}, indent=2))
PY
done
rm -rf "$sim_tmp"

{
    echo "gpu: ${gpu_name}"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "backends: ${backends}"
    echo "pytest -m gpu exit code: ${tests_rc}"
    echo "mvg-rt bench exit code: ${bench_rc} (124: stopped by the timeout)"
    echo "mvg-rt simulate exit codes:${sim_rc}"
    echo "wall seconds: $(( $(date +%s) - started ))"
    python -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} | tee "$out/gpu_check.txt"

[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$sim_rc" = " eager:0 graphs:0" ]
