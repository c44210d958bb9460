#!/usr/bin/env bash
# One leased-GPU call: train + evaluate + time (experiments/gpu_run.py), then pack the results so that
# they come back through the device's file limits (at most 8 files of 16 MiB).
#
# Here, once:   python experiments/gpu_data.py pack ../shared/data/fer2013.npz .gpudata/fer2013_packed.npz
# On the GPU:   bash experiments/gpu_run.sh .gpudata/fer2013_packed.npz "$OUT" 6      (carry .gpudata)
# Back here:    cat OUT/gpu.tar.part-* | tar x -C runs/     -> runs/gpu/{summary.md,weights/,eval/,runs/}
set -euo pipefail
DATA=${1:?packed or plain fer2013 npz}
DEST=${2:?folder for the packed results}
MINUTES=${3:-6}
shift 3 || true  # anything after MINUTES goes to experiments/gpu_run.py (e.g. --tiny for a CPU smoke test)
WORK=${WORK:-/tmp/fexsdk-gpu}
# No install needed: experiments/_checkout.py maps the checkout's training/ and export/ where fexsdk is not installed.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
rc=0
# The call has 10 minutes: the evaluations are cut at DEADLINE s so that packing always happens.
DEADLINE=${DEADLINE:-0}
python3 experiments/gpu_run.py --data "$DATA" --out "$WORK/gpu" --minutes "$MINUTES" --deadline "$DEADLINE" "$@" || rc=$?
mkdir -p "$DEST"
cp "$WORK/gpu/summary.md" "$DEST/" 2>/dev/null || true
# Everything but the full checkpoints (D and optimizers) and the unpacked data.
tar -C "$WORK" -cf - --exclude='gpu/data' --exclude='last.pt' --exclude='best.pt' gpu | split -b 15m - "$DEST/gpu.tar.part-"
ls -la "$DEST"
exit $rc
