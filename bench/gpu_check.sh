#!/usr/bin/env bash
# The CUDA paths in one short run (about 11 minutes on one H100, 7 with PYTEST=0, +3 with the training): training
# throughput fp32 / bf16 / fp16 (GradScaler), Transformer and LSTM; a MINUTES-minute bf16 Transformer
# training (skipped when MODEL names a checkpoint to decode instead); decoding speed, fp32 and bf16
# autocast, greedy and beam 5, at the default batch and with the batch caps off; a torchrun NCCL
# smoke run; on a host CPU with native bf16 (AVX512-BF16/AMX), Transformer and LSTM training and
# beam-5 decoding in bf16 autocast against fp32; the test suite with CUDA visible (pytest-xdist when
# installed; PYTEST=0 skips it). Everything is printed; JSON files go to $OUT.
#
#     OUT=gpu-results DATA=prepared/de-en bash bench/gpu_check.sh
#     OUT=gpu-results MODEL=runs/tf60/best.pt bash bench/gpu_check.sh     # decode this model, no training
#     OUT=$OUT MODEL=... PYTEST=0 bash bench/gpu_check.sh    # within a 10-minute limit (the device tool's)
#
# Needs torch (CUDA), sentencepiece, sacrebleu, typer, tqdm; nmt itself runs from the checkout.
set -u
OUT=${OUT:-gpu-results}
DATA=${DATA:-prepared/de-en}
MINUTES=${MINUTES:-3}
MODEL=${MODEL:-}
PYTEST=${PYTEST:-1}
mkdir -p "$OUT" /tmp/nmt-pp
ln -sfn "$PWD/cli" /tmp/nmt-pp/nmt_cli
ln -sfn "$PWD/data" /tmp/nmt-pp/nmt_recipes
export PYTHONPATH="$PWD:/tmp/nmt-pp" PYTHONUNBUFFERED=1
PY=${PY:-python3}
step() { echo "== $(date +%T) $*"; }

step gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c 'import torch, sentencepiece, sacrebleu, typer, tqdm; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

step throughput at the CPU batch size
timeout 200 $PY bench/train_throughput.py --data "$DATA" --models transformer lstm --amp none bf16 \
    --warmup 5 --updates 40 --out "$OUT/throughput.json"
step throughput with 24k-token batches, fp16 with GradScaler too
timeout 240 $PY bench/train_throughput.py --data "$DATA" --models transformer lstm --amp none bf16 fp16 \
    --batch-tokens 24000 --warmup 3 --updates 20 --out "$OUT/throughput_big.json"

if [ -z "$MODEL" ]; then
    step train "$MINUTES" minutes bf16
    timeout $((MINUTES * 60 + 90)) $PY -m nmt_cli.main train -c configs/transformer.toml -o /tmp/nmt-gpu-run --overwrite \
        --set data.dir="\"$DATA\"" --set train.amp='"bf16"' --set train.max_minutes="$MINUTES" \
        --set train.valid_every=1000 --set train.save_every=1000
    cp /tmp/nmt-gpu-run/metrics.jsonl "$OUT/metrics.jsonl"
    MODEL=/tmp/nmt-gpu-run/best.pt
fi

step decode test2016 on the GPU, fp32 and bf16 autocast
timeout 150 $PY bench/decode.py -m "$MODEL" --src "$DATA/test.src" --ref "$DATA/test.ref" \
    --device cuda --amp none bf16 --out "$OUT/decode.json"
step decode with the batch caps off: all 1,000 sentences in one batch
timeout 100 $PY bench/decode.py -m "$MODEL" --src "$DATA/test.src" --ref "$DATA/test.ref" \
    --device cuda --amp none bf16 --batch-size 1000 --batch-tokens 0 --out "$OUT/decode_big.json"

step torchrun NCCL
timeout 120 torchrun --standalone --nproc_per_node 1 -m nmt_cli.main train -c configs/transformer.toml \
    -o /tmp/nmt-ddp --overwrite --set data.dir="\"$DATA\"" --set train.amp='"bf16"' --set train.max_steps=60 \
    --set train.valid_every=60 --set train.valid_max_sentences=50 2>&1 | tail -5

step the host CPU: bf16 autocast against fp32, where it has native bf16
if $PY -c 'import sys, torch; sys.exit(0 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 1)'; then
    CUDA_VISIBLE_DEVICES= timeout 150 $PY bench/train_throughput.py --data "$DATA" --models transformer lstm \
        --amp none bf16 --warmup 2 --updates 10 --out "$OUT/cpu_throughput.json"
    CUDA_VISIBLE_DEVICES= timeout 120 $PY bench/decode.py -m "$MODEL" --src "$DATA/test.src" --ref "$DATA/test.ref" \
        --device cpu --amp none bf16 --beams 5 --out "$OUT/cpu_decode.json"
else
    echo "no native bf16 on this host CPU: skipped"
fi

if [ "$PYTEST" != 0 ]; then
    step pytest with CUDA visible
    XDIST=$($PY -c 'import xdist' 2>/dev/null && echo "-n 8")  # 8 workers x 2 threads, not 8 x 16
    OMP_NUM_THREADS=2 timeout 300 $PY -m pytest -q -p no:cacheprovider $XDIST tests 2>&1 | tail -15
fi
step done
