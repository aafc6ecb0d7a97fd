#!/usr/bin/env bash
# The GPU check, for the first machine with one NVIDIA GPU and this project's dependencies installed:
#   bash bench/gpu_check.sh            (PYTHON=... to pick the interpreter, GPU_CHECK_DIR=... for the scratch dir)
# 1. the CUDA-only tests (tests/test_cuda.py) and the CPU copies of the GPU path (tests/test_gpu_path.py);
# 2. steps 1 and 2 on generated reviews (titles and headlines);
# 3. step 3 with `--model-size base --max-time 180` and nothing else that shapes training (the defaults),
#    then prints tokens/s, MFU and the validation loss. About 6-8 minutes in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_DIR:-/tmp/gpu_check}
SECONDS_OF_TRAINING=${GPU_CHECK_SECONDS:-180}
mkdir -p "$OUT"

"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible: this check is for a GPU machine"
print(f"GPU: {torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()}), torch {torch.__version__}")
PY

echo "== 1. CUDA tests =="
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_gpu_path.py

echo "== 2. generated corpus and tokenizer =="
if [ ! -f "$OUT/reviews.tsv.gz" ]; then
  "$PY" -c "import sys; sys.path.insert(0, 'bench'); from corpus_throughput import generate; generate('$OUT/reviews.tsv.gz', 300_000, seed=3)"
fi
"$PY" corpus/run_corpus_generation.py --data-files "$OUT/reviews.tsv.gz" --text-column product_title,review_headline \
  --output-dir "$OUT/corpus" --overwrite --no-progress
"$PY" tokenizer/run_tokenizer_fitting.py --corpus-dir "$OUT/corpus/train" --output-dir "$OUT/tokenizer" \
  --overwrite --no-progress

echo "== 3. --model-size base --max-time $SECONDS_OF_TRAINING, defaults =="
"$PY" training/run_training.py --job-dir "$OUT/job" --no-resume --path-to-train-set "$OUT/corpus/train" \
  --path-to-val-set "$OUT/corpus/validation" --path-to-tokenizer "$OUT/tokenizer" \
  --model-size base --max-time "$SECONDS_OF_TRAINING" --no-progress > "$OUT/train.log" 2>&1 \
  || { tail -20 "$OUT/train.log"; exit 1; }
grep -E "device plan|first optimizer step|validation at|^\{" "$OUT/train.log" || true

"$PY" - "$OUT/job" <<'PY'
import json, os, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
job = sys.argv[1]
metrics = json.load(open(os.path.join(job, "final_metrics.json")))
events = EventAccumulator(os.path.join(job, "tensorboard"), size_guidance={"scalars": 0}).Reload()
def last(tag, n=5):
    values = [e.value for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []
    return sum(values[-n:]) / len(values[-n:]) if values else float("nan")
val = [(e.step, round(e.value, 3)) for e in events.Scalars("val/loss")] if "val/loss" in events.Tags()["scalars"] else []
print(f"steps {metrics['global_step']}, {metrics['train_seconds']:.0f} s of training")
print(f"tokens/s: {metrics['train_tokens_per_second']:,.0f} (run), {last('throughput/tokens_per_sec'):,.0f} (last logged)")
print(f"MFU: {last('throughput/mfu'):.1%} (mean of the last 5 logged)")
print(f"validation loss: {metrics['val_loss']:.3f} (perplexity {metrics['val_perplexity']:.1f}); along the run: {val}")
PY
