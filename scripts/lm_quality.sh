#!/usr/bin/env bash
# Issue 13 quality benchmark: nanoGPT's small CPU recipe on tinyshakespeare with `deba train --policy fixed`.
# 4 layers, 4 heads, 128-dim embeddings, context 64, batch 12 sequences, 2,000 steps (24,000 samples), no
# dropout, AdamW lr 1e-3, 100 warm-up steps (1,200 samples), cosine to 1e-4 over the 2,000 steps, beta2 0.99,
# weight decay 0.1 (matrices and embeddings only), gradient clip 1.0. Usage: scripts/lm_quality.sh OUT SEED
set -euo pipefail
out=${1:?out folder}; seed=${2:-1337}
deba train --arch gpt --dataset shakespeare-char --data "${DATA:-/work/shared/data/tinyshakespeare.txt}" \
  --block-size 64 --n-layer 4 --n-head 4 --n-embd 128 --dropout 0 \
  --policy fixed --start-batch 12 --epochs 2 --max-samples 24000 \
  --optimizer adamw --lr 1e-3 --lr-schedule cosine --min-lr 1e-4 --warmup-samples 1200 \
  --beta1 0.9 --beta2 0.99 --weight-decay 0.1 --grad-clip 1.0 \
  --seed "$seed" --device cpu --quiet --out "$out"
