#!/usr/bin/env python3
"""DPO alone against SFT-then-DPO (`hone train --method sft+dpo`) on the quality suite's
preference task (examples/quality/preference, issue #18), scored on the held-out pairs
by `hone eval --preference-file`: the absolute preference accuracy (the chosen answer's
total log-prob is higher) and the mean margin of total log-probs. Both variants use
hone's "auto" hyperparameters and the same seeds, alternated so machine noise hits both
alike. Prints a markdown table and writes every run's figures to OUT/results.json.

    sft_dpo_compare.py [--hone target/release/hone] [--model smollm2-135m-instruct] \
        [--seeds 1,2] [--out DIR]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "examples" / "quality" / "preference"


def run(cmd):
    t0 = time.time()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")
    return r.stdout, r.stderr, time.time() - t0


def evaluate(args, adapter=None):
    cmd = [args.hone, "eval", "--model", args.model, "--cases", TASK / "eval.jsonl", "--json",
           "--max-tokens", "8", "--preference-file", TASK / "heldout_pairs.jsonl"]
    if adapter:
        cmd += ["--adapter", adapter, "--baseline", "none"]
    out, _, _ = run(cmd)
    pa = json.loads(out)["runs"][0]["pair_accuracy"]
    return {"pair_accuracy": pa["accuracy"], "mean_margin": pa["mean_margin"]}


def train(args, method, out, seed):
    _, err, secs = run([args.hone, "train", "--model", args.model, "--out", out, "--seed", seed,
                        "--data", TASK / "dpo.jsonl", "--method", method])
    return secs, [l for l in err.splitlines() if l.strip().startswith(("n_epochs", "batch_size",
                                                                     "learning_rate", "beta", "stage"))]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hone", default=str(ROOT / "target" / "release" / "hone"))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--out", default="target/sft_dpo")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"base": evaluate(args), "dpo": [], "sft+dpo": []}
    print(f"base: {results['base']}", file=sys.stderr, flush=True)
    for seed in args.seeds.split(","):
        for method in ["dpo", "sft+dpo"]:
            d = out / f"{method.replace('+', '_')}-seed{seed}"
            secs, hp = train(args, method, d, seed)
            r = evaluate(args, d)
            r.update(seed=int(seed), train_seconds=round(secs, 1), hyperparameters=hp)
            if method == "sft+dpo":
                r["after_sft_stage"] = evaluate(args, d / "sft")
            results[method].append(r)
            print(f"{method} seed {seed}: {r}", file=sys.stderr, flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    print("| method | held-out preference accuracy | mean margin (nats) | train s |")
    print("|---|---|---|---|")
    b = results["base"]
    print(f"| base | {b['pair_accuracy']:.2f} | {b['mean_margin']:.1f} | |")
    for m in ["dpo", "sft+dpo"]:
        rows = results[m]
        cell = lambda k: " / ".join(f"{r[k]:.2f}" for r in rows)  # noqa: E731
        mean = lambda k: statistics.mean(r[k] for r in rows)  # noqa: E731
        print(f"| {m} | {cell('pair_accuracy')} (mean {mean('pair_accuracy'):.2f}) "
              f"| {cell('mean_margin')} | {cell('train_seconds')} |")


if __name__ == "__main__":
    main()
