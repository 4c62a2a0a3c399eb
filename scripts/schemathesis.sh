#!/usr/bin/env bash
# Fuzzes a running `hone serve` with schemathesis, driven by the server's
# own /openapi.json: every operation gets schema-valid and schema-breaking
# requests, and the run fails on any 5xx, an undocumented status or content
# type, or an answer that does not match its response schema.
#
#   scripts/schemathesis.sh HONE_BIN MODEL [SECONDS]
#
# MODEL is a GGUF path or registry id (scripts/test.sh passes the default
# model); HONE_TEST_EMBED_DIR, when set, is served as the embedding model so
# that /v1/embeddings is fuzzed too. SECONDS bounds the fuzzing (default 180;
# the whole step, venv included, takes about that plus 30 s when the wheels
# are cached). The server gets a fresh HONE_HOME; its log is printed on
# failure.
#
# Training jobs: the fuzzer never starts a real one. A job needs a training
# file that passed validation, and the fuzzer's file ids are random strings
# (404 at creation), while the files it uploads are random bytes (status
# `error`, refused as a training file). There are no OpenAPI links, so no
# stateful chaining from an upload to a job either.
set -euo pipefail
cd "$(dirname "$0")/.."

hone="${1:?usage: scripts/schemathesis.sh HONE_BIN MODEL [SECONDS]}"
model="${2:?usage: scripts/schemathesis.sh HONE_BIN MODEL [SECONDS]}"
budget="${3:-180}"
venv="$PWD/target/schemathesis-venv"
key=sk-hone-fuzz

python3 -m venv "$venv"
"$venv/bin/pip" install --quiet -r tests/schemathesis/requirements.txt

home="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
serve=("$hone" serve --port "$port" --api-key "$key" --model "$model")
if [ -n "${HONE_TEST_EMBED_DIR:-}" ]; then
  serve+=(--embedding-model "$HONE_TEST_EMBED_DIR")
else
  serve+=(--embedding-model none)
fi
HONE_HOME="$home" "${serve[@]}" >"$home/server.log" 2>&1 &
server=$!
stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$home"
}
trap stop EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 240); do
  if curl -fsS "$base/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then cat "$home/server.log"; exit 1; fi
  sleep 0.5
done

# Real ids for the `{id}` routes, so that they answer 200 (checked against
# their response schemas) and not only 404: a valid training file (the
# fuzzer may delete it; later calls then check the 404) and the base model
# (deleting it is a 400).
auth=(-H "Authorization: Bearer $key")
python3 -c 'import json
for i in range(10):
    print(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."},
                                   {"role": "assistant", "content": f"{i}."}]}))' >"$home/train.jsonl"
file_id="$(curl -fsS "${auth[@]}" -F purpose=fine-tune -F "file=@$home/train.jsonl" "$base/v1/files" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
model_id="$(curl -fsS "${auth[@]}" "$base/v1/models" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')"
cat >"$home/schemathesis.toml" <<TOML
[[operations]]
include-path-regex = "^/v1/files/[{]id[}]"
parameters = { "path.id" = "$file_id" }

[[operations]]
include-path = "/v1/models/{id}"
parameters = { "path.id" = "$model_id" }
TOML

# One worker: the server's chat slots and the 2-core CI machine are the
# bottleneck, and one seed makes a failure reproducible. Run from $home, where
# schemathesis keeps its `.schemathesis/` cache.
cd "$home"
if ! "$venv/bin/schemathesis" --config-file "$home/schemathesis.toml" run "$base/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-time "$budget" \
  --request-timeout 120 \
  --workers 1 \
  --seed 17 \
  --suppress-health-check too_slow \
  --no-color; then
  echo "== schemathesis failed; server log:" >&2
  tail -n 200 "$home/server.log" >&2
  exit 1
fi
