#!/usr/bin/env bash
# Text transfer on a GPU (issue 19, item 7), one command for a lent GPU machine:
#   1. pretrain BERT-base sizes (docs/recipes.md, "Scale to BERT-base") with MLM on the offline GCIDE
#      dictionary for at most $MINUTES minutes of wall time (bf16), then
#   2. fine-tune the export on Rotten Tomatoes against the same architecture from random weights and
#      the TF-IDF probe, with every label and with 100 labels per class, 3 seeds each, paired tests.
# Results: $OUT/*.log (the printed tables) and the runs' metrics.jsonl. Record them in docs/recipes.md
# ("bert", "On a GPU") with the device name from $OUT/device.log.
#
# The device has no network: carry what it lacks. From the repository root on this machine:
#   mmssl data prepare gcide                                  # Debian dict-gcide -> ~/.cache/mmssl/datasets
#   mkdir -p .gpu/datasets && cp -r ~/.cache/mmssl/datasets/gcide .gpu/datasets/
# then run this script there with .gpu and .whl (wheels the device lacks; see gpu_suite.sh) carried along.
# SMOKE=1 runs the same commands with tiny sizes on a CPU, to check the script before spending device time.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_text}; MINUTES=${MINUTES:-8}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then  # the lent machine: install the missing wheels and mmssl without network
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
fi
if [ -d .gpu/datasets ]; then export MMSSL_CACHE=$PWD/.gpu; fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no GPU"; } | tee "$OUT/device.log"

if [ "${SMOKE:-0}" = 1 ]; then  # a CPU check of the commands: a tiny model for a few steps
    SIZE=(--set encoder.hidden_size=32 --set encoder.num_layers=1 --set encoder.num_heads=2
          --set encoder.intermediate_size=64 --set data.tokenizer.vocab_size=1000 --set data.max_texts=2000)
    STEPS=(--set train.max_steps=5 --set train.batch_size=8 --set train.mixed_precision=no)
    TUNE=(--set train.max_steps=3 --set task.max_train_samples=400)
else  # BERT-base (Devlin et al. 2019) at a batch one GPU holds in bf16; lr and warmup scaled to a short run
    SIZE=(--set encoder.hidden_size=768 --set encoder.num_layers=12 --set encoder.num_heads=12
          --set encoder.intermediate_size=3072 --set data.tokenizer.vocab_size=30522)
    STEPS=(--set train.batch_size=256 --set train.lr=5e-4 --set train.warmup_steps=500
           --set train.max_steps=100000 --set "train.max_minutes=$MINUTES" --set train.mixed_precision=bf16)
    TUNE=(--set train.lr=5e-5 --set train.batch_size=32)
fi

python3 -m mmssl.cli pretrain bert --output-dir "$OUT/bert" --overwrite \
    --set data.source=prepared --set data.name=gcide "${SIZE[@]}" "${STEPS[@]}" 2>&1 | tee "$OUT/pretrain.log" | tail -3
python3 -m mmssl.cli finetune "$OUT/bert" --task rotten-tomatoes --baseline --seeds 3 "${TUNE[@]}" \
    2>&1 | tee "$OUT/finetune_all_labels.log" | tail -12
python3 -m mmssl.cli finetune "$OUT/bert" --task rotten-tomatoes --baseline --seeds 3 "${TUNE[@]}" \
    --set task.labels_per_class=100 2>&1 | tee "$OUT/finetune_100_per_class.log" | tail -12
