#!/bin/sh
# The three demonstrations of docs/decide.md: trains two adapters and runs
# `hone eval` with its baselines on each set. Tables go to $OUT/*.txt.
#   HONE=path/to/hone MODEL=smollm2-135m-instruct EMB=all-minilm-l6-v2 OUT=decide-runs ./run.sh
set -eu
cd "$(dirname "$0")"
HONE=${HONE:-hone}
MODEL=${MODEL:-smollm2-135m-instruct}
EMB=${EMB:-all-minilm-l6-v2}
OUT=${OUT:-decide-runs}
mkdir -p "$OUT"
COMMON="--model $MODEL --embedding-model $EMB --max-tokens 40"

[ -f "$OUT/knowledge/summary.json" ] || $HONE train --model "$MODEL" --data knowledge/train.jsonl --out "$OUT/knowledge"
[ -f "$OUT/style/summary.json" ] || $HONE train --model "$MODEL" --data style/train.jsonl --out "$OUT/style"

# (a) knowledge: trained on docs_v1's facts; the documents changed since (docs/).
$HONE eval $COMMON --cases knowledge/cases.jsonl --adapter "$OUT/knowledge" \
  --baseline base --baseline rag:knowledge/docs:2 --baseline fine-tuned+rag:knowledge/docs:2 \
  | tee "$OUT/knowledge.txt"
# (b) style: the house style, prompted, shown by example, and fine-tuned.
$HONE eval $COMMON --cases style/cases.jsonl --adapter "$OUT/style" --train-file style/train.jsonl \
  --baseline base --baseline prompt:style/prompt.txt --baseline few-shot:4 \
  | tee "$OUT/style.txt"
# (c) style + facts from documents the fine-tune never saw.
$HONE eval $COMMON --cases both/cases.jsonl --adapter "$OUT/style" --train-file style/train.jsonl \
  --baseline base --baseline prompt:style/prompt.txt --baseline few-shot:4 \
  --baseline rag:both/docs:2 --baseline fine-tuned+rag:both/docs:2 \
  | tee "$OUT/both.txt"
