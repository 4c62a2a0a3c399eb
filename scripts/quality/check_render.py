#!/usr/bin/env python3
"""Checks that the peft reference (peft_ref.py) trains on the text hone trains on: for
each SFT task of the quality suite, the total and the trained (target) token counts of
peft_ref's rendering, through transformers' tokenizer and chat template of the GGUF,
must equal `hone data stats` on the same file. A difference means the suite compares
two trainers on different data (as when the reference rendered OpenAI's string
arguments of a tool call as a JSON string inside the call, or when a template that
cannot render tools dropped them).

    check_render.py --hone target/release/hone --gguf MODEL.gguf [--tasks a,b]

Exit 0 when every task agrees, 1 otherwise (each difference printed).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import peft_ref  # noqa: E402
from transformers import AutoConfig, AutoTokenizer  # noqa: E402

TASKS = Path(__file__).resolve().parents[2] / "examples" / "quality"


def hone_counts(hone, gguf, data):
    out = subprocess.run([hone, "data", "stats", "--json", "--model", gguf, data],
                         capture_output=True, text=True, check=True).stdout
    t = json.loads(out)["stats"]["tokens"]
    return t["total_tokens"], t["total_trained_tokens"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hone", required=True)
    p.add_argument("--gguf", required=True)
    p.add_argument("--tasks", help="comma-separated task names (default: every SFT task)")
    args = p.parse_args()
    d, f = os.path.dirname(os.path.abspath(args.gguf)), os.path.basename(args.gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model_type = AutoConfig.from_pretrained(d, gguf_file=f).model_type
    peft_ref.use_hone_default_template(tok, model_type, f)
    names = args.tasks.split(",") if args.tasks else sorted(
        t.name for t in TASKS.iterdir() if (t / "train.jsonl").exists())
    bad = 0
    for name in names:
        data = TASKS / name / "train.jsonl"
        rows = [json.loads(line) for line in open(data) if line.strip()]
        total = trained = 0
        for r in rows:
            ids, tgt = peft_ref.render(tok, r["messages"], r.get("tools"))
            total, trained = total + len(ids), trained + sum(tgt)
        want = hone_counts(args.hone, args.gguf, str(data))
        ok = (total, trained) == want
        bad += not ok
        print(f"{'ok  ' if ok else 'DIFF'} {name}: peft_ref {total} tokens, {trained} trained; "
              f"hone {want[0]}, {want[1]}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
