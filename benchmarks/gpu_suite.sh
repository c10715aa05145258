#!/usr/bin/env bash
# The GPU measurements recorded in docs/benchmarks.md ("On a GPU"), as one script for a lent
# machine that has torch/transformers/accelerate/torch-geometric but no network:
#   .whl/      wheels it lacks (datasets, dill, multiprocess, soundfile, cffi, pycparser; Python 3.12)
#   .gpu/fmnist/  Debian's dataset-fashion-mnist IDX files (the image builder reads them)
# Each benchmark's output goes to $OUT/NAME.log; every side of a comparison runs on the same GPU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_suite}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MMSSL_CACHE=/tmp/mmssl-cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null || exit 1
mkdir -p /usr/share/datasets && cp -r .gpu/fmnist /usr/share/datasets/fashion-mnist
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.log"
python3 -c "import torch, transformers, accelerate; print(torch.__version__, transformers.__version__, accelerate.__version__)" | tee -a "$OUT/device.log"
run() { local name=$1; shift; echo "== $name: $*"; timeout "${LIMIT:-150}" "$@" 2>&1 | grep -v Warning | tee "$OUT/$name.log" | tail -4; }
# 1. text: the bert recipe (hidden 256, 4 layers), then BERT-base sizes, mmssl Trainer vs HF Trainer, bf16 both sides
run text_mlm_recipe_bf16 python3 benchmarks/text_mlm.py --repeats 3 --skip 10 --steps 50 --set train.mixed_precision=bf16
BASE="--set encoder.hidden_size=768 --set encoder.num_layers=12 --set encoder.num_heads=12 --set encoder.intermediate_size=3072"
run text_mlm_base_bf16 python3 benchmarks/text_mlm.py --repeats 3 --skip 5 --steps 30 $BASE \
    --set data.tokenizer.vocab_size=30522 --set train.batch_size=64 --set train.mixed_precision=bf16
# 2. audio: the wav2vec2 recipe's step vs transformers' pretraining path, batch 32 x 2 s, bf16 and fp32
run audio_wav2vec2_bf16 python3 benchmarks/audio_wav2vec2.py --rounds 5 --steps 10 --bf16 --set train.batch_size=32
run audio_wav2vec2_fp32 python3 benchmarks/audio_wav2vec2.py --rounds 5 --steps 10 --set train.batch_size=32
# 3. images: batched per-sample views vs a per-image torchvision loop, both on the GPU
run image_augment_cuda python3 benchmarks/image_augment.py --device cuda --rounds 5 --calls 20
# 4. the simclr recipe at GPU speed for 2 minutes (bf16 via mixed_precision=auto), then a kNN probe
python3 -m mmssl.cli data prepare fashion-mnist >/dev/null 2>&1
LIMIT=200 run simclr_pretrain python3 -m mmssl.cli pretrain simclr --output-dir /tmp/simclr \
    --set train.max_steps=3000 --set train.max_minutes=2 --set monitor.every=500
cp /tmp/simclr/metrics.jsonl "$OUT/simclr_metrics.jsonl" 2>/dev/null
LIMIT=120 run simclr_knn python3 -m mmssl.cli evaluate /tmp/simclr --protocol knn --task fashion-mnist
