#!/usr/bin/env bash
# bf16 autocast against fp32 at equal steps: the Transformer config, the same seed and batches,
# STEPS updates each (one validation, at the end), then test_2016_flickr BLEU and chrF, beam 5, of
# each run's last.pt (the checkpoint of update STEPS). About 45 minutes for 2,000 updates on 2 cores
# of a CPU with native bf16 (AVX512-BF16/AMX); a few minutes on a GPU (DEVICE=cuda).
#
#     bash bench/amp_quality.sh                      # DATA=prepared/de-en STEPS=2000 DEVICE=auto
#     STEPS=300 WORK=/tmp/aq bash bench/amp_quality.sh
#     SETS="model.d_model=64 model.ff_size=128" bash bench/amp_quality.sh    # more settings, as nmt train --set
#
# Prints one line per precision and writes $WORK/amp_quality.json.
set -euo pipefail
DATA=${DATA:-prepared/de-en}
STEPS=${STEPS:-2000}
DEVICE=${DEVICE:-auto}
WORK=${WORK:-/tmp/nmt-amp-quality}
SETS=${SETS:-}
extra=()
for kv in $SETS; do extra+=(--set "$kv"); done
mkdir -p "$WORK"
for amp in none bf16; do
    start=$(date +%s)
    python -m nmt_cli.main train -c configs/transformer.toml -o "$WORK/$amp" --overwrite \
        --set data.dir="\"$DATA\"" --set train.amp="\"$amp\"" --set train.device="\"$DEVICE\"" \
        --set train.max_steps="$STEPS" --set train.max_minutes=0 --set train.valid_every="$STEPS" "${extra[@]}" 2>&1 \
        | grep -v "upd/s" >&2
    echo $(( $(date +%s) - start )) > "$WORK/$amp/train_seconds"
    python -m nmt_cli.main evaluate -m "$WORK/$amp/last.pt" --src "$DATA/test.src" --ref "$DATA/test.ref" \
        --beam 5 --device "$DEVICE" --json > "$WORK/$amp/test.json"
done
python - "$WORK" "$STEPS" <<'EOF'
import json, sys
from pathlib import Path

work, steps = Path(sys.argv[1]), int(sys.argv[2])
rows = []
for amp in ("none", "bf16"):
    test = json.loads((work / amp / "test.json").read_text())
    valid = [json.loads(l) for l in (work / amp / "metrics.jsonl").read_text().splitlines()]
    valid = [m for m in valid if m.get("kind") == "valid"][-1]
    rows.append({"amp": amp, "steps": steps, "train_seconds": int((work / amp / "train_seconds").read_text()),
                 "valid_bleu": valid.get("bleu"), "test_bleu": test["bleu"]["score"], "test_chrf": test["chrf"]["score"]})
    print(" ".join(f"{k}={v}" for k, v in rows[-1].items()))
print(f"test BLEU bf16 - fp32: {rows[1]['test_bleu'] - rows[0]['test_bleu']:+.2f}")
(work / "amp_quality.json").write_text(json.dumps(rows, indent=2) + "\n")
EOF
