#!/usr/bin/env bash
# The CUDA paths in one short run (about 8 minutes on one H100): training throughput fp32 / bf16 / fp16
# (GradScaler), a 3-minute bf16 Transformer training with test BLEU, decoding speed, a torchrun NCCL
# smoke run, and the test suite with CUDA visible.
#
#     OUT=gpu-results DATA=prepared/de-en bash bench/gpu_check.sh
#
# Needs torch (CUDA), sentencepiece, sacrebleu, typer, tqdm; nmt itself runs from the checkout.
set -u
OUT=${OUT:-gpu-results}
DATA=${DATA:-prepared/de-en}
MINUTES=${MINUTES:-3}
mkdir -p "$OUT" /tmp/nmt-pp
ln -sfn "$PWD/cli" /tmp/nmt-pp/nmt_cli
ln -sfn "$PWD/data" /tmp/nmt-pp/nmt_recipes
export PYTHONPATH="$PWD:/tmp/nmt-pp" PYTHONUNBUFFERED=1
PY=${PY:-python3}
step() { echo "== $(date +%T) $*"; }

step gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c 'import torch, sentencepiece, sacrebleu, typer, tqdm; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' | tee -a "$OUT/gpu.txt"

step throughput at the CPU batch size
timeout 200 $PY bench/train_throughput.py --data "$DATA" --models transformer lstm --amp none bf16 \
    --warmup 5 --updates 40 --out "$OUT/throughput.json"
step throughput with 24k-token batches, fp16 with GradScaler too
timeout 120 $PY bench/train_throughput.py --data "$DATA" --models transformer --amp none bf16 fp16 \
    --batch-tokens 24000 --warmup 3 --updates 20 --out "$OUT/throughput_big.json"

step train "$MINUTES" minutes bf16
timeout $((MINUTES * 60 + 90)) $PY -m nmt_cli.main train -c configs/transformer.toml -o /tmp/nmt-gpu-run \
    --set data.dir="\"$DATA\"" --set train.amp='"bf16"' --set train.max_minutes="$MINUTES" \
    --set train.valid_every=1000 --set train.save_every=1000
cp /tmp/nmt-gpu-run/metrics.jsonl "$OUT/metrics.jsonl"

step decode test2016 on the GPU
timeout 150 $PY bench/decode.py -m /tmp/nmt-gpu-run/best.pt --src "$DATA/test.src" --ref "$DATA/test.ref" \
    --device cuda --out "$OUT/decode.json"

step torchrun NCCL
timeout 120 torchrun --standalone --nproc_per_node 1 -m nmt_cli.main train -c configs/transformer.toml \
    -o /tmp/nmt-ddp --set data.dir="\"$DATA\"" --set train.amp='"bf16"' --set train.max_steps=60 \
    --set train.valid_every=60 --set train.valid_max_sentences=50 2>&1 | tail -5

step pytest with CUDA visible
timeout 150 $PY -m pytest -q -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/pytest.txt"
step done
