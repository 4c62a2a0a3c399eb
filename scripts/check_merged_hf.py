#!/usr/bin/env python3
"""Checks a directory written by `hone merge` with Hugging Face transformers.

What it checks (each failure exits 1 with a message; success prints "ok"):

1. transformers loads DIR with AutoModelForCausalLM in float32, with no
   missing, unexpected or mismatched keys (a merged model that loads with
   random tensors in place of missing ones would still "run").
2. --logits FILE (JSON {"input_ids": [...], "logits": [[...], ...]}, written
   by hone from the same directory): transformers' logits at every position
   equal hone's within --tol (default 1e-4).
3. --prompt TEXT --expect-file FILE: the prompt rendered with DIR's own chat
   template (a single user message, generation prompt added) and tokenized
   by DIR's tokenizer gives the same ids as hone's, and greedy decoding of
   --max-new-tokens (default 16) gives the same token ids and text as hone.
   FILE is JSON {"prompt_ids": [...], "token_ids": [...], "text": "..."}
   (hone's `token_ids` may end with the stop token that ended generation).

Usage (what hone's ignored tests and CI run):
    python scripts/check_merged_hf.py DIR [--logits FILE] [--tol 1e-4]
    python scripts/check_merged_hf.py DIR --prompt "..." --expect-file FILE

Tested with torch 2.15 and transformers 5.25 (CPU).
"""

import argparse
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def fail(msg):
    print(f"check_merged_hf: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def load_model(path):
    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        fail(f"{path}: transformers reports {bad}")
    model.eval()
    return model


def check_logits(model, path, tol):
    with open(path) as f:
        ref = json.load(f)
    ids = torch.tensor([ref["input_ids"]], dtype=torch.long)
    want = torch.tensor(ref["logits"], dtype=torch.float32)
    with torch.no_grad():
        got = model(ids).logits[0].float()
    if got.shape != want.shape:
        fail(f"logits shape {tuple(got.shape)} != hone's {tuple(want.shape)}")
    gap = (got - want).abs().max().item()
    print(f"max |transformers - hone| logit gap: {gap:.3g} (tolerance {tol:g})")
    if not gap < tol:
        fail(f"logits differ by {gap} (tolerance {tol})")


def check_generation(model, path, prompt, expect_file, max_new_tokens):
    with open(expect_file) as f:
        expect = json.load(f)
    tok = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": prompt}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    if prompt_ids != expect["prompt_ids"]:
        fail(f"prompt ids differ:\n transformers {prompt_ids}\n hone         {expect['prompt_ids']}")
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    new = out[0, len(prompt_ids):].tolist()
    stops = model.generation_config.eos_token_id
    stops = set(stops if isinstance(stops, list) else [stops] if stops is not None else [])
    # hone keeps the stop token that ended generation in token_ids; so does generate().
    if new != expect["token_ids"]:
        fail(f"greedy ids differ:\n transformers {new}\n hone         {expect['token_ids']}")
    body = [t for t in new if t not in stops]
    got_text = tok.decode(body, skip_special_tokens=True)
    if got_text != expect["text"]:
        fail(f"greedy text differs:\n transformers {got_text!r}\n hone         {expect['text']!r}")
    print(f"greedy {len(new)} tokens equal hone's: {got_text!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="the HF directory hone merge wrote")
    ap.add_argument("--logits", help="JSON with input_ids and hone's logits")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--prompt", help="user message for the greedy-generation check")
    ap.add_argument("--expect-file", help="JSON with hone's prompt_ids, token_ids and text")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    a = ap.parse_args()
    if (a.prompt is None) != (a.expect_file is None):
        ap.error("--prompt and --expect-file go together")
    torch.manual_seed(0)
    model = load_model(a.dir)
    if a.logits:
        check_logits(model, a.logits, a.tol)
    if a.prompt is not None:
        check_generation(model, a.dir, a.prompt, a.expect_file, a.max_new_tokens)
    print("ok")


if __name__ == "__main__":
    main()
