#!/usr/bin/env python3
"""docs/distill.md's demo, end to end: a teacher (Qwen2.5-Coder-0.5B) served
by `hone serve` answers every prompt with `store: true`; the training half is
exported with `hone data export-completions`; SmolLM2-135M is fine-tuned on
it; `hone eval` measures the student's agreement with the teacher on the
held-out half, against the untuned student, and the teacher's own speed and
cost on the same cases.

  python3 examples/distill/run_demo.py --hone target/release/hone \
      --teacher qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --student SmolLM2-135M-Instruct.Q4_1.gguf --work /tmp/d
"""
import argparse
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SYSTEM = "Answer with only the name of the programming language, nothing else."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=600) as r:
        return json.load(r)


def ask_teacher(port: int, prompts: Path, split: str) -> dict:
    """Every prompt of the file, stored with metadata split=<split>; the
    wall time and tokens, for the teacher's speed."""
    n, secs, completion, prompt_tokens = 0, 0.0, 0, 0
    for line in prompts.read_text().splitlines():
        t = time.time()
        r = post(port, "/v1/chat/completions", {
            "model": "teacher", "temperature": 0, "max_tokens": 16, "store": True,
            "metadata": {"demo": "langid", "split": split},
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": json.loads(line)}]})
        secs += time.time() - t
        n += 1
        completion += r["usage"]["completion_tokens"]
        prompt_tokens += r["usage"]["prompt_tokens"]
    return {"requests": n, "seconds": secs, "completion_tokens": completion, "prompt_tokens": prompt_tokens}


def eval_cases(port: int, out: Path) -> int:
    """The held-out stored completions as `hone eval` cases: the student
    agrees when its whole answer is the teacher's (case-insensitive, a
    trailing period allowed)."""
    lines, after = [], ""
    while True:
        page = get(port, f"/v1/chat/completions?limit=100&metadata%5Bsplit%5D=heldout{after}")
        for c in page["data"]:
            msgs = get(port, f"/v1/chat/completions/{c['id']}/messages")["data"]
            answer = c["choices"][0]["message"]["content"].strip().rstrip(".")
            lines.append(json.dumps({
                "messages": [{"role": m["role"], "content": m["content"]} for m in msgs],
                "expected_patterns": ["re:(?i)^\\s*" + re.escape(answer) + "\\.?\\s*$"],
                "ideal": answer}))
        if not page["has_more"]:
            break
        after = "&after=" + page["last_id"]
    out.write_text("\n".join(lines) + "\n")
    return len(lines)


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(map(str, cmd)), flush=True)
    t = time.time()
    p = subprocess.run(cmd, text=True, capture_output=True, **kw)
    print(p.stdout[-3000:], p.stderr[-1500:] if p.returncode else "", f"[{time.time() - t:.0f} s]", flush=True)
    if p.returncode not in (0, 1):
        raise SystemExit(f"failed: {cmd}")
    return p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hone", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--epochs", default="3")
    ap.add_argument("--per-language", default="10,4", help="training and held-out prompts per language")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    run([sys.executable, here / "make_prompts.py", work, *a.per_language.split(",")])
    port = free_port()
    log = open(work / "server.log", "w")
    server = subprocess.Popen([a.hone, "serve", "--port", str(port), "--home", work / "home",
                               "--model", f"teacher={a.teacher}"], stdout=log, stderr=log)
    try:
        for _ in range(600):
            try:
                get(port, "/health")
                break
            except OSError:
                time.sleep(0.5)
        speed = {s: ask_teacher(port, work / f"{s}_prompts.txt", s) for s in ["train", "heldout"]}
        (work / "teacher_speed.json").write_text(json.dumps(speed, indent=1))
        print(json.dumps(speed, indent=1))
        run([a.hone, "data", "export-completions", "--server", f"http://127.0.0.1:{port}",
             "--metadata", "demo=langid", "--metadata", "split=train", "--out", work / "train.jsonl"])
        print(eval_cases(port, work / "cases.jsonl"), "held-out cases")
    finally:
        server.terminate()
        server.wait()
    run([a.hone, "train", "--data", work / "train.jsonl", "--model", a.student, "--out", work / "adapter",
         "--epochs", a.epochs, "--seed", "0"])
    for name, extra in [("student", ["--model", a.student, "--adapter", work / "adapter", "--baseline", "base"]),
                        ("teacher", ["--model", a.teacher, "--baseline", "none"])]:
        p = run([a.hone, "eval", "--cases", work / "cases.jsonl", "--max-tokens", "16", "--json", *extra])
        (work / f"eval_{name}.json").write_text(p.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
