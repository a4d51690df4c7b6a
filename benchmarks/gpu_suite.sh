#!/usr/bin/env bash
# Every GPU case of the inference suite in one call on a GPU machine (which has torch, timm,
# transformers, PIL but no Rust): the extension is built elsewhere and copied over.
#   run (with python/liteclip/_liteclip.abi3.so copied in):  bash benchmarks/gpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/../python" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi -L
python3 bench_predict.py --device cuda --repeats 20 --json "$out/predict.json"
python3 bench_image_embed.py --device cuda --n 256 --batch 256 --repeats 3 --json "$out/image.json"
python3 bench_text_embed.py --device cuda --json "$out/text.json"
python3 train_gpu.py --steps 150 --json "$out/train.json"
python3 bench_distributed.py --device cuda --model liteclip --batch 256 --steps 40 --json "$out/distributed.json"
