#!/usr/bin/env bash
# Interop checks of issue #22 on the default model (SmolLM2-135M-Instruct): trains a
# small adapter with hone, merges it (f32 and bf16) and exports it (f16, q8_0, q4_k_m
# GGUFs and the LoRA GGUF), then runs scripts/interop.py, which checks them with peft,
# transformers and llama.cpp (llama-cpp-python). See docs/export.md for what it checks
# and the last recorded result.
#
# Python: a venv at $INTEROP_VENV (default target/interop-venv) with torch,
# transformers, peft, gguf and llama-cpp-python, made on first use (pip; torch is the
# large CPU wheel; llama-cpp-python builds llama.cpp from source, ~15 min on 2 cores).
# To reuse what is already installed instead:
#   INTEROP_PYTHON=/path/to/python      an interpreter with torch, transformers, peft, gguf
#   LLAMA_CPP_PY_SRC=DIR                llama-cpp-python's source tree (its llama_cpp/ package)
#   LLAMA_CPP_LIB_PATH=DIR              a directory with a matching libllama.so
# Other knobs: HONE_BIN (default target/release/hone, built if missing), INTEROP_GGUF
# (default: the registry's default model, fetched if missing), INTEROP_WORK (kept
# output directory; default a temp dir, removed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HONE="${HONE_BIN:-$TARGET/release/hone}"
if [[ ! -x "$HONE" ]]; then
  cargo build --release --workspace
fi

WORK="${INTEROP_WORK:-}"
if [[ -z "$WORK" ]]; then
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"

# --- Python --------------------------------------------------------------------------
PY="${INTEROP_PYTHON:-}"
PYPATH=()
if [[ -z "$PY" ]]; then
  VENV="${INTEROP_VENV:-$TARGET/interop-venv}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.15.0 transformers==5.25.0 peft==0.21.2 gguf==0.19.0 \
      sentencepiece protobuf
  fi
  PY="$VENV/bin/python"
fi
if [[ -n "${LLAMA_CPP_PY_SRC:-}" ]]; then
  # llama-cpp-python's pure-Python package on a prebuilt libllama.so; its one missing
  # dependency goes into a private directory, not into the interpreter's site-packages.
  : "${LLAMA_CPP_LIB_PATH:?set LLAMA_CPP_LIB_PATH with LLAMA_CPP_PY_SRC}"
  if ! "$PY" -c 'import diskcache' 2>/dev/null; then
    "$PY" -m pip install -q --target "$WORK/pydeps" diskcache
    PYPATH+=("$WORK/pydeps")
  fi
  PYPATH+=("$LLAMA_CPP_PY_SRC")
elif ! "$PY" -c 'import llama_cpp' 2>/dev/null; then
  "$PY" -m pip install -q llama-cpp-python==0.3.36
fi
export PYTHONPATH="$(IFS=:; echo "${PYPATH[*]:-}")${PYTHONPATH:+:$PYTHONPATH}"

# --- hone: train, merge, export ------------------------------------------------------
GGUF="${INTEROP_GGUF:-}"
if [[ -z "$GGUF" ]]; then
  "$HONE" model fetch smollm2-135m-instruct >&2
  GGUF="${HONE_HOME:-$HOME/.hone}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
EX="$ROOT/examples/support"
if [[ ! -f "$WORK/adapter/adapter_model.safetensors" ]]; then
  "$HONE" train --model "$GGUF" --data "$EX/train.jsonl" --out "$WORK/adapter" \
    --epochs 1 --target-modules all-linear >&2
fi
[[ -d "$WORK/merged-f32" ]] || "$HONE" merge --model "$GGUF" --adapter "$WORK/adapter" --out "$WORK/merged-f32" --dtype f32
[[ -d "$WORK/merged-bf16" ]] || "$HONE" merge --model "$GGUF" --adapter "$WORK/adapter" --out "$WORK/merged-bf16" --dtype bf16
[[ -f "$WORK/export/model-f16.gguf" ]] || "$HONE" export --model "$GGUF" --adapter "$WORK/adapter" \
  --out "$WORK/export" --type f16,q8_0,q4_k_m,q4_1

# --- A local hub cache holding the base under its repository id (check 2) ------------
REPO="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["base_model_name_or_path"])' "$WORK/adapter/adapter_config.json")"
export HF_HUB_CACHE="$WORK/hub" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SNAP="$HF_HUB_CACHE/models--${REPO//\//--}/snapshots/0000000000000000000000000000000000000000"
if [[ ! -f "$SNAP/config.json" ]]; then
  mkdir -p "$SNAP" "$HF_HUB_CACHE/models--${REPO//\//--}/refs"
  echo -n 0000000000000000000000000000000000000000 > "$HF_HUB_CACHE/models--${REPO//\//--}/refs/main"
  "$PY" - "$GGUF" "$SNAP" <<'PYEOF'
import sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
g, snap = Path(sys.argv[1]), sys.argv[2]
AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name).save_pretrained(snap)
m = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, torch_dtype=torch.float32)
# transformers will not save a model it read from GGUF: copy the (dequantized) weights
# into a plain model of the same config.
plain = AutoModelForCausalLM.from_config(m.config, torch_dtype=torch.float32)
plain.load_state_dict(m.state_dict())
plain.save_pretrained(snap)
PYEOF
fi

"$PY" "$ROOT/scripts/interop.py" --hone "$HONE" --gguf "$GGUF" --adapter "$WORK/adapter" \
  --merged "$WORK/merged-f32" --merged-bf16 "$WORK/merged-bf16" --export "$WORK/export" \
  --valid "$EX/valid.jsonl" --prompts "$EX/eval.jsonl" --summary "$WORK/interop-summary.json"
