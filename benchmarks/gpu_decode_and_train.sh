#!/usr/bin/env bash
# Two GPU measurements in one call, on a machine with torch, timm, transformers and PIL (no
# Rust needed there: copy the built python/liteclip/_liteclip.abi3.so over):
#   bash benchmarks/gpu_decode_and_train.sh
# 1. From-disk image embedding as a share of the forward-only rate (target >= 50%), exact and
#    fast decoding, 512 mixed JPEGs (Flickr sizes and some up to 4000x3000), batch 256.
# 2. Training the full model at batch 64 and 256 in bf16 against an eager PyTorch step
#    (target >= 1.3x at batch 256).
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/../python" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi -L
nproc
python3 bench_image_embed.py --device cuda --n 512 --batch 256 --repeats 3 --decode exact fast \
  --json "$out/image.json"
python3 train_gpu.py --steps 150 --json "$out/train.json"
