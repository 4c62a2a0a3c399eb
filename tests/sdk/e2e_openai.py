"""End-to-end: the official `openai` Python SDK against `hone serve`.

Runs the seeds' fine-tuning flow unchanged but for `base_url`:
upload a training file, create a supervised job, poll it to success, list its
events and checkpoints, download the result file, chat with the `ft:` model
(plain and streaming), list models, delete the fine-tuned model. It also
checks that a bad training file is reported with every one of its errors.

Usage (scripts/test.sh runs it with a venv it makes):
    python tests/sdk/e2e_openai.py --hone target/release/hone --model GGUF
    python tests/sdk/e2e_openai.py --hone target/release/hone --model QWEN_GGUF \
        --base-id qwen2.5-coder-0.5b-instruct

`--base-id` is the id the server gives the GGUF (a registered model's file
keeps its registry id); the job fine-tunes it and chats with its `ft:` model.

It starts its own server on a free port with a fresh HONE_HOME, and stops it
at the end. Exit 0 when every step passed.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-hone-e2e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(hone: str, model: str, home: Path, port: int,
                 embedding_model: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, HONE_HOME=str(home), RUST_LOG="info")
    log = open(home / "server.log", "wb")
    cmd = [hone, "serve", "--port", str(port), "--api-key", API_KEY, "--model", model]
    if embedding_model:
        cmd += ["--embedding-model", embedding_model]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"hone serve exited early; log:\n{(home / 'server.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("hone serve did not start listening within 120 s")


def step(msg: str) -> None:
    print(f"-- {msg}", flush=True)


def bad_file_reports_every_error(client: OpenAI, tmp: Path) -> None:
    step("upload a bad training file")
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),  # no assistant
        "{not json",
        json.dumps({"messages": [{"role": "wizard", "content": "x"},
                                 {"role": "assistant", "content": "y"}]}),
    ]
    good = json.dumps({"messages": [{"role": "user", "content": "Hello there"},
                                    {"role": "assistant", "content": "Hi, how can I help?"}]})
    bad = tmp / "bad.jsonl"
    bad.write_text("\n".join(lines + [good] * 10) + "\n")
    f = client.files.create(file=bad.open("rb"), purpose="fine-tune")
    f = wait_file(client, f.id)
    assert f.status == "error", f"bad file status: {f.status}"
    details = f.status_details or ""
    for line in ("line 1", "line 2", "line 3"):
        assert line in details, f"{line!r} missing from status_details: {details}"
    step("a job on the bad file is refused with every error")
    try:
        client.fine_tuning.jobs.create(training_file=f.id, model=BASE)
        raise AssertionError("job on a bad file was accepted")
    except openai.BadRequestError as e:
        text = str(e)
        assert "line 1" in text and "line 3" in text, text


def wait_file(client: OpenAI, file_id: str):
    for _ in range(120):
        f = client.files.retrieve(file_id)
        if f.status in ("processed", "error"):
            return f
        time.sleep(0.5)
    raise AssertionError(f"file {file_id} stayed {f.status}")


def fine_tune_flow(client: OpenAI, tmp: Path) -> None:
    step("upload a training file")
    train = ROOT / "examples" / "format" / "train.jsonl"
    f = client.files.create(file=train.open("rb"), purpose="fine-tune")
    f = wait_file(client, f.id)
    assert f.status == "processed", f"status {f.status}: {f.status_details}"

    step("create a supervised job (1 epoch)")
    job = client.fine_tuning.jobs.create(
        training_file=f.id,
        model=BASE,
        suffix="e2e",
        seed=7,
        method={"type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8,
                                                   "learning_rate_multiplier": 5}}},
    )
    assert job.status in ("validating_files", "queued", "running"), job.status

    step("poll until it succeeds")
    deadline = time.time() + 900
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, "job did not finish in 15 minutes"
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", f"job {job.status}: {job.error}"
    assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"ft:{BASE}"), job.fine_tuned_model
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.result_files, "no result file"
    print(f"   {job.id} -> {job.fine_tuned_model}, {job.trained_tokens} trained tokens")

    step("list events and checkpoints")
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any(e.type == "metrics" for e in events), [e.message for e in events]
    assert any("succeeded" in e.message.lower() or "completed" in e.message.lower()
               for e in events), [e.message for e in events]
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts, "no checkpoints"
    assert all(c.fine_tuned_model_checkpoint.startswith("ft:") for c in ckpts)

    step("download the result file")
    content = client.files.content(job.result_files[0]).text
    header = content.splitlines()[0]
    assert "step" in header and "train_loss" in header, header

    step("chat with the ft: model")
    messages = [
        {"role": "system", "content": "You answer staff questions about the Quillfeather Labs employee handbook."},
        {"role": "user", "content": "How many days of annual leave do I get?"},
    ]
    r = client.chat.completions.create(model=job.fine_tuned_model, messages=messages,
                                       temperature=0, max_tokens=48)
    answer = r.choices[0].message.content
    assert answer, "empty answer"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    print(f"   ft answer: {answer!r}")

    step("chat streaming, with usage")
    chunks = list(client.chat.completions.create(
        model=job.fine_tuned_model, messages=messages, temperature=0, max_tokens=48,
        stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer, f"stream {streamed!r} != {answer!r}"
    assert chunks[-1].usage is not None, "no usage chunk"

    step("chat with a checkpoint model")
    r = client.chat.completions.create(model=ckpts[0].fine_tuned_model_checkpoint,
                                       messages=messages, temperature=0, max_tokens=16)
    assert r.choices[0].message.content

    concurrent_streams(client, [BASE, job.fine_tuned_model, ckpts[0].fine_tuned_model_checkpoint],
                       messages)

    step("list models, then delete the fine-tuned model")
    ids = [m.id for m in client.models.list().data]
    assert BASE in ids and job.fine_tuned_model in ids, ids
    deleted = client.models.delete(job.fine_tuned_model)
    assert deleted.deleted
    ids = [m.id for m in client.models.list().data]
    assert job.fine_tuned_model not in ids
    try:
        client.chat.completions.create(model=job.fine_tuned_model, messages=messages)
        raise AssertionError("chat with a deleted model succeeded")
    except openai.NotFoundError:
        pass


def concurrent_streams(client: OpenAI, models: list, messages: list) -> None:
    """8 clients at once, streaming, on the base and two adapters (one batch
    per base model in the server): each gets what it gets alone."""
    step("8 concurrent streaming clients on mixed adapters")
    from concurrent.futures import ThreadPoolExecutor

    asks = [(models[i % len(models)], 24 + i) for i in range(8)]

    def alone(ask):
        model, n = ask
        r = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                           max_tokens=n)
        return r.choices[0].message.content

    def streamed(ask):
        model, n = ask
        chunks = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                max_tokens=n, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    expected = [alone(a) for a in asks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(streamed, asks))
    for a, e, g in zip(asks, expected, got):
        assert g == e, f"{a}: concurrent {g!r} != alone {e!r}"
    print(f"   {len(asks)} concurrent streams equal their answers alone")


def embeddings_flow(client: OpenAI, model: str) -> None:
    """client.embeddings.create as the SDK sends it (base64 by default),
    floats, a batch, usage, and the 400 for an unsupported `dimensions`."""
    step("embeddings: one string (the SDK asks for base64 and decodes it)")
    r = client.embeddings.create(model=model, input="The cat sits on the mat.")
    v = r.data[0].embedding
    assert len(v) == 384 and abs(sum(x * x for x in v) - 1.0) < 1e-3, len(v)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 2, r.usage
    step("embeddings: a batch of strings as floats, in order")
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Invoices are due monthly."]
    r2 = client.embeddings.create(model=model, input=texts, encoding_format="float")
    assert [d.index for d in r2.data] == [0, 1, 2]
    assert max(abs(a - b) for a, b in zip(r2.data[0].embedding, v)) < 1e-5
    cos = [sum(a * b for a, b in zip(r2.data[0].embedding, d.embedding)) for d in r2.data[1:]]
    assert cos[0] > cos[1], cos  # the paraphrase is nearer than the unrelated text
    step("embeddings: an unsupported `dimensions` is a 400 naming it")
    try:
        client.embeddings.create(model=model, input="x", dimensions=8)
        raise AssertionError("dimensions=8 accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "dimensions", e.body


def stored_completions_flow(client: OpenAI) -> None:
    """Stored completions (`store=True`) through the SDK's own calls:
    chat.completions.list/retrieve/update/delete and .messages.list."""
    step("stored completions: two stored, one not")
    ask = [{"role": "system", "content": "Answer in one short sentence."},
           {"role": "user", "content": "What colour is the sky?"}]
    kept = client.chat.completions.create(model=BASE, messages=ask, max_tokens=16,
                                          store=True, metadata={"flow": "sdk", "n": "1"})
    streamed = list(client.chat.completions.create(
        model=BASE, messages=ask, max_tokens=16, stream=True,
        store=True, metadata={"flow": "sdk", "n": "2"}))
    client.chat.completions.create(model=BASE, messages=ask, max_tokens=4)
    step("stored completions: list with a metadata filter, retrieve, messages")
    page = client.chat.completions.list(metadata={"flow": "sdk"}, limit=10)
    ids = [c.id for c in page.data]
    assert ids == [kept.id, streamed[0].id], ids
    only = client.chat.completions.list(metadata={"n": "1"}).data
    assert [c.id for c in only] == [kept.id]
    first = client.chat.completions.list(limit=1)
    assert first.has_more and [c.id for c in first.data] == [kept.id]
    got = client.chat.completions.retrieve(kept.id)
    assert got.choices[0].message.content == kept.choices[0].message.content
    msgs = client.chat.completions.messages.list(kept.id).data
    assert [m.content for m in msgs] == [m["content"] for m in ask], msgs
    step("stored completions: update metadata, delete, then 404")
    upd = client.chat.completions.update(kept.id, metadata={"flow": "done"})
    assert upd.id == kept.id
    assert [c.id for c in client.chat.completions.list(metadata={"flow": "done"}).data] == [kept.id]
    gone = client.chat.completions.delete(kept.id)
    assert gone.deleted and gone.id == kept.id
    try:
        client.chat.completions.retrieve(kept.id)
        raise AssertionError("a deleted completion was retrieved")
    except openai.NotFoundError:
        pass


BASE = "smollm2-135m-instruct"


def main() -> int:
    global BASE
    ap = argparse.ArgumentParser()
    ap.add_argument("--hone", default=str(ROOT / "target" / "release" / "hone"))
    ap.add_argument("--model", required=True, help="the base model GGUF")
    ap.add_argument("--base-id", default=BASE, help="the id hone serve gives --model")
    ap.add_argument("--embedding-model", help="an embedding model directory for "
                    "/v1/embeddings (all-minilm-l6-v2); without it that step is skipped")
    args = ap.parse_args()
    BASE = args.base_id
    with tempfile.TemporaryDirectory(prefix="hone-sdk-") as d:
        home = Path(d)
        port = free_port()
        proc = start_server(args.hone, args.model, home, port, args.embedding_model)
        try:
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                            max_retries=0, timeout=300)
            step("the wrong key gets a 401")
            try:
                OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong",
                       max_retries=0).models.list()
                raise AssertionError("wrong key accepted")
            except openai.AuthenticationError:
                pass
            bad_file_reports_every_error(client, home)
            stored_completions_flow(client)
            fine_tune_flow(client, home)
            if args.embedding_model:
                embeddings_flow(client, Path(args.embedding_model).name)
        except BaseException:
            print((home / "server.log").read_text()[-6000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("openai SDK end-to-end: all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
