#!/usr/bin/env bash
# Every GPU benchmark in one call of under 10 minutes, for a lent GPU machine that has
# torch, timm, numpy, scipy and scikit-learn but no install of this repo (each script
# maps the checkout onto `clusterprobe` itself). Each step has its own time limit, so a
# slow one cannot take the others' time; logs and JSON go to OUTDIR.
#
#   bash benchmarks/gpu_session.sh "$OUT"
set -u
out=${1:-.}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1

step() {  # step SECONDS NAME SCRIPT ARGS...
    local limit=$1 name=$2 script=$3
    shift 3
    echo "== $name (at most $limit s)"
    timeout "$limit" python "$here/$script" "$@" > "$out/$name.log" 2>&1
    echo "   exit $? after ${SECONDS}s in all"
    tail -n 12 "$out/$name.log"
}

step 90 gpu_paths gpu_paths.py --out "$out/gpu_paths.json"
step 150 gpu_protocol gpu_protocol.py --out "$out/gpu_protocol.json"
step 150 eval_model eval_model.py --device cuda --precision bf16 --out "$out/eval_model_gpu.json"
step 170 gpu_rnn gpu_rnn.py --out "$out/gpu_rnn.json"
