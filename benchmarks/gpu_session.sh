#!/usr/bin/env bash
# Every GPU benchmark in one call of under 10 minutes, for a lent GPU machine that has
# torch, timm, numpy, scipy and scikit-learn but no install of this repo (each script
# maps the checkout onto `clusterprobe` itself). Each step has its own time limit, and
# none may run past the session's (TOTAL seconds from the start), so a slow step cannot
# take the others' time; the steps run in the order of what waits on them (eval_model:
# issue 12; gpu_protocol, gpu_paths, probe, loader: issue 20), logs and JSON go to OUTDIR.
#
#   bash benchmarks/gpu_session.sh "$OUT"                 # every step
#   bash benchmarks/gpu_session.sh "$OUT" probe loader    # only these
set -u
out=${1:-.}
shift || true
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
total=${TOTAL:-570}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1

step() {  # step SECONDS NAME SCRIPT ARGS...
    local limit=$1 name=$2 script=$3
    shift 3
    if [ -n "$wanted" ] && [[ " $wanted " != *" $name "* ]]; then
        return
    fi
    local left=$((total - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "== $name skipped: ${left}s of the session left"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most $limit s)"
    timeout "$limit" python "$here/$script" "$@" > "$out/$name.log" 2>&1
    echo "   exit $? after ${SECONDS}s in all"
    tail -n 12 "$out/$name.log"
}

wanted="$*"
step 150 eval_model eval_model.py --device cuda --precision bf16 --out "$out/eval_model_gpu.json"
step 150 gpu_protocol gpu_protocol.py --out "$out/gpu_protocol.json"
step 90 gpu_paths gpu_paths.py --out "$out/gpu_paths.json"
step 120 probe probe.py --device cuda --epochs 1 --big --out "$out/probe_gpu.json"
step 60 loader loader.py --cache-only --sizes 224,64 --device cuda
step 170 gpu_rnn gpu_rnn.py --out "$out/gpu_rnn.json"
