#!/usr/bin/env python3
"""The quality suite (issue #18): for each task in examples/quality/, fine-tune with
hone's "auto" settings and with the peft reference (scripts/quality/peft_ref.py), each
with several seeds, and score both adapters with the same `hone eval` cases (greedy).
Prints a markdown table (mean and min–max of the held-out pass rate, wall time of the
training) and writes every run's figures to OUT/results.json.

    run.py --hone target/release/hone --python /path/to/venv/bin/python \
        [--model smollm2-135m-instruct] [--tasks style_facts,...] [--seeds 1,2,3] [--out DIR]

The Python needs torch, transformers, peft and gguf (tests/hf/requirements.txt).

Status (2026-12-07): run on SmolLM2-135M (docs/quality.md, "Session 18": seeds 1-3 of the
four faster tasks, seed 1 of the others); not yet on Qwen2.5-0.5B. `--hone-flags "..."` runs
hone with explicit settings (e.g. peft's recipe), `--who hone` one trainer only, and
`--label` keeps such runs apart, `--validation` gives hone each task's validation file
(early stopping; peft's recipe has none); each run's log (hone's JSON events, peft's per-step
losses) is kept next to its adapter as `<run>.log`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "examples" / "quality"


def run(cmd, log=None, **kw):
    """Runs `cmd`; with `log`, keeps its stdout and stderr there (the loss curves)."""
    t0 = time.time()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if log:
        Path(log).write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")
    return r.stdout, time.time() - t0


def model_file(args):
    out, _ = run([args.hone, "model", "fetch", args.model])
    return out.strip().split("\t")[-1]


def evaluate(args, task, adapter=None):
    cmd = [args.hone, "eval", "--model", args.model, "--cases", task / "eval.jsonl", "--json",
           "--max-tokens", str(args.max_tokens)]
    if adapter:
        cmd += ["--adapter", adapter, "--baseline", "none"]
    if (task / "heldout_pairs.jsonl").exists():
        cmd += ["--preference-file", task / "heldout_pairs.jsonl"]
    out, _ = run(cmd)
    r = json.loads(out)["runs"][0]
    res = {"passed": r["summary"]["passed"], "total": r["summary"]["total"], "pass_rate": r["summary"]["pass_rate"]}
    if r.get("pair_accuracy"):
        res["pair_accuracy"] = r["pair_accuracy"]["accuracy"]
        res["mean_margin"] = r["pair_accuracy"]["mean_margin"]
    return res


def train_hone(args, task, out, seed):
    dpo = (task / "dpo.jsonl").exists()
    cmd = [args.hone, "train", "--model", args.model, "--out", out, "--seed", seed, "--json-events",
           "--data", task / ("dpo.jsonl" if dpo else "train.jsonl")]
    if dpo:
        cmd += ["--method", "dpo"]
    if args.validation:
        cmd += ["--validation", task / "validation.jsonl"]
    cmd += args.hone_flags.split()
    _, secs = run(cmd, log=f"{out}.log")
    return secs


def train_ref(args, task, out, seed, gguf):
    dpo = (task / "dpo.jsonl").exists()
    cmd = [args.python, ROOT / "scripts" / "quality" / "peft_ref.py", "--gguf", gguf, "--out", out,
           "--seed", seed, "--data", task / ("dpo.jsonl" if dpo else "train.jsonl")]
    if dpo:
        cmd += ["--method", "dpo"]
    cmd += args.peft_flags.split()
    _, secs = run(cmd, log=f"{out}.log", env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    return secs


def spread(xs):
    return f"{statistics.mean(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hone", default=str(ROOT / "target" / "release" / "hone"))
    p.add_argument("--python", required=True)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tasks", default=",".join(sorted(d.name for d in TASKS.iterdir() if d.is_dir())))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="target/quality")
    p.add_argument("--hone-flags", default="", help="extra `hone train` flags (default: all auto)")
    p.add_argument("--peft-flags", default="", help="extra peft_ref.py flags (default: its recipe)")
    p.add_argument("--validation", action="store_true",
                   help="give hone the task's validation file (auto epochs then stop early and keep the best step)")
    p.add_argument("--who", default="hone,peft", help="which trainers to run, in this order")
    p.add_argument("--label", default="", help="a name for these settings in the run directories")
    args = p.parse_args()
    out = Path(args.out) / args.model
    out.mkdir(parents=True, exist_ok=True)
    gguf = model_file(args)
    results = {}
    for name in args.tasks.split(","):
        task = TASKS / name
        rows = results[name] = {"base": evaluate(args, task), "hone": [], "peft": []}
        trainers = {"hone": lambda d, s: train_hone(args, task, d, s),
                    "peft": lambda d, s: train_ref(args, task, d, s, gguf)}
        for seed in args.seeds.split(","):
            # Alternate the two trainers so machine noise hits both alike.
            for who in args.who.split(","):
                d = out / name / f"{who}{args.label}-seed{seed}"
                secs = trainers[who](d, seed)
                r = evaluate(args, task, d)
                r.update(seed=int(seed), train_seconds=round(secs, 1))
                rows[who].append(r)
                print(f"{name} {who} seed {seed}: {r}", file=sys.stderr, flush=True)
                (out / f"results{args.label}.json").write_text(json.dumps(results, indent=1))
    print("| task | base | hone auto: pass rate | peft: pass rate | hone s | peft s |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        key = "pair_accuracy" if "pair_accuracy" in rows["base"] else "pass_rate"

        def cell(who, k):
            return spread([r[k] for r in rows[who]]) if rows[who] else "—"

        print(f"| {name} ({key}) | {rows['base'][key]:.2f} | {cell('hone', key)} | {cell('peft', key)} "
              f"| {cell('hone', 'train_seconds')} | {cell('peft', 'train_seconds')} |")


if __name__ == "__main__":
    main()
