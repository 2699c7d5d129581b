#!/usr/bin/env bash
# Every side-by-side figure of the speed issue in one command (102 minutes on a 2-core Zen 3 EPYC; without
# JoeyNMT 70 minutes on a 2-core Zen 5 EPYC):
#
#   ONMT=~/venvs/onmt JOEY=~/venvs/joey bash bench/full_side_by_side.sh
#
# 1. training tokens/s and peak RSS, Transformer and LSTM, ours (fp32, and bf16 autocast where the
#    CPU has native bf16) against OpenNMT-py 3.5.1 and JoeyNMT 2.3.0, 100 updates each (bench/side_by_side.py);
# 2. test BLEU after 20 and 60 minutes of training and whole-process decoding speed (greedy, beam 5,
#    int8 too), ours and OpenNMT-py training at the same time on one core each, JoeyNMT after them
#    for 20 minutes on one core (bench/time_to_quality.py --concurrent).
# JOEY is optional. Install steps: bench/side_by_side.py's docstring. bf16 against fp32 at equal
# steps (BLEU): bench/amp_quality.sh.
# Results: bench/results/side_by_side.json and bench/results/time_to_quality.json.
set -euo pipefail
: "${ONMT:?set ONMT to the virtual environment with opennmt-py 3.5.1}"
DATA=${DATA:-prepared/de-en}
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
joey=()
if [ -n "${JOEY:-}" ]; then joey=(--joey "$JOEY"); fi
start=$(date +%s)
python bench/side_by_side.py --onmt "$ONMT" "${joey[@]}" --data "$DATA" --updates 100 --amp none bf16
python bench/time_to_quality.py --onmt "$ONMT" "${joey[@]}" --data "$DATA" --minutes 20 60 --concurrent --int8
echo "full side by side: $(( ($(date +%s) - start) / 60 )) min" >&2
