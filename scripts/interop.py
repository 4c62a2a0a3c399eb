#!/usr/bin/env python3
"""Interop checks of hone's outputs with the Python ecosystem (issue #22); run by
scripts/interop.sh, which trains the adapter, merges and exports it first.

1. The PEFT adapter loads in peft on the transformers base (read from the same GGUF,
   dequantized to f32) and gives hone's validation loss (`hone eval --chat-file`,
   f32) within 1e-5 over the same assistant tokens.
2. `AutoPeftModelForCausalLM.from_pretrained(adapter_dir)` works: the adapter names the
   base by its repository id, which resolves in a local hub cache (HF_HUB_CACHE, offline)
   holding the base; its logits equal check 1's model.
3. The `hone merge --dtype f32` directory loads in transformers with no missing or
   unexpected keys, and evaluated in float64 its logits are within 1e-4 of base +
   adapter's (also in float64) at every position; the f32-evaluated gap is reported
   beside the f32 noise floor (peft's own merge_and_unload, the f32 reference vs f64);
   the bf16 merge's gap is measured.
4. The exported GGUFs load in llama.cpp (llama-cpp-python): greedy answers of the f16
   export are compared with `hone chat --weights f32 --adapter` for each prompt, as are
   the quantized exports and base GGUF + LoRA GGUF (agreement measured, not required:
   answers equal, and per answer the first differing token, hone's text re-tokenized).

Prints one line per check and a JSON summary; exits 1 if checks 1-3 or the f16 load fail.
"""

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

FAILS = []
SUMMARY = {}


def check(ok, name, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    SUMMARY[name] = {"ok": bool(ok), "detail": detail}
    if not ok:
        FAILS.append(name)


def assistant_mask(tok, messages):
    """Token ids of the rendered chat and a 0/1 mask of assistant-answer tokens (the
    text each assistant turn adds after the generation prompt, up to and including its
    end-of-turn token, without the newline after it)."""
    full = tok.apply_chat_template(messages, tokenize=False)
    ids, mask, pos = [], [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        answer = upto[len(before):].rstrip("\n")
        assert full.startswith(before) and full.startswith(before + answer)
        pre = tok(full[pos:len(before)], add_special_tokens=False)["input_ids"]
        ans = tok(answer, add_special_tokens=False)["input_ids"]
        ids += pre + ans
        mask += [0] * len(pre) + [1] * len(ans)
        pos = len(before) + len(answer)
    rest = tok(full[pos:], add_special_tokens=False)["input_ids"]
    return ids + rest, mask + [0] * len(rest)


@torch.no_grad()
def chat_loss(model, tok, examples):
    nll, n = 0.0, 0
    for ex in examples:
        ids, mask = assistant_mask(tok, ex["messages"])
        x = torch.tensor([ids])
        logits = model(x).logits[0].double()
        logp = torch.log_softmax(logits[:-1], -1)
        tgt = x[0, 1:]
        m = torch.tensor(mask[1:], dtype=torch.bool)
        nll -= logp[torch.arange(len(tgt)), tgt][m].sum().item()
        n += int(m.sum())
    return nll / n, n


@torch.no_grad()
def last_logits(model, ids):
    return model(torch.tensor([ids])).logits[0].float()


def hone(args, *cmd):
    r = subprocess.run([args.hone, *cmd], capture_output=True, text=True,
                       env=dict(os.environ, NO_COLOR="1"))
    if r.returncode != 0:
        sys.exit(f"hone {' '.join(cmd)} failed:\n{r.stderr}")
    return r.stdout


def hone_answer(args, messages, max_tokens):
    sys_msg = [m["content"] for m in messages if m["role"] == "system"]
    user = [m["content"] for m in messages if m["role"] == "user"][-1]
    cmd = ["chat", "--model", args.gguf, "--weights", "f32", "--adapter", args.adapter,
           "--temperature", "0", "--max-tokens", str(max_tokens)]
    if sys_msg:
        cmd += ["--system", sys_msg[0]]
    return hone(args, *cmd, user).strip()


def llama_answer(llm, tok, messages, max_tokens):
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    if hasattr(prompt, "input_ids"):
        prompt = prompt["input_ids"]
    out = []
    eos = {llm.token_eos()} | {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<end_of_turn>")
                               if t in tok.get_vocab()}
    for t in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        if t in eos or len(out) >= max_tokens:
            break
        out.append(t)
    llm.reset()
    return tok.decode(out, skip_special_tokens=True).strip()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hone", required=True)
    p.add_argument("--gguf", required=True, help="the base model GGUF")
    p.add_argument("--adapter", required=True)
    p.add_argument("--merged", required=True, help="hone merge --dtype f32 output")
    p.add_argument("--merged-bf16", required=True)
    p.add_argument("--export", required=True, help="hone export --out directory")
    p.add_argument("--valid", required=True, help="validation chat file")
    p.add_argument("--prompts", required=True, help="chat file whose conversations are prompts")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--summary", help="write the JSON summary here")
    args = p.parse_args()
    torch.set_num_threads(2)
    gguf = Path(args.gguf)

    from peft import AutoPeftModelForCausalLM, PeftModel

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    base = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                dtype=torch.float32)
    # Check 1: the adapter in peft, same validation loss as hone's.
    peft_model = PeftModel.from_pretrained(base, args.adapter).eval()
    examples = [json.loads(l) for l in Path(args.valid).read_text().splitlines() if l.strip()]
    loss, n = chat_loss(peft_model, tok, examples)
    ev = json.loads(hone(args, "eval", "--model", args.gguf, "--adapter", args.adapter,
                         "--weights", "f32", "--cases", args.prompts, "--baseline", "none",
                         "--chat-file", args.valid, "--max-tokens", "1", "--json"))
    hl = find_loss(ev)
    check(hl is not None and abs(hl["loss"] - loss) < 1e-5 and hl["tokens"] == n,
          "1 peft validation loss",
          f"peft {loss:.7f} over {n} tokens, hone {hl and hl['loss']:.7f} over {hl and hl['tokens']}")

    ids = tok.apply_chat_template(examples[0]["messages"])
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    ref = last_logits(peft_model, ids)

    # Check 2: AutoPeftModel resolves the base by repository id (local hub cache).
    cfg = json.loads((Path(args.adapter) / "adapter_config.json").read_text())
    auto = AutoPeftModelForCausalLM.from_pretrained(args.adapter, dtype=torch.float32).eval()
    gap = (last_logits(auto, ids) - ref).abs().max().item()
    check(gap < 1e-5, "2 AutoPeftModelForCausalLM",
          f"base {cfg['base_model_name_or_path']!r} (hone id {cfg.get('hone_base_model')!r}), "
          f"logit gap {gap:.2e}")

    # Check 3: the merged directories in transformers. The bound is checked in f64 (the
    # f32 merge's weights, and base + adapter, evaluated in float64): it then measures the
    # merge alone. In f32 both forward passes carry their own rounding (the unmerged f32
    # reference is itself off its f64 value, and peft's own merge_and_unload moves f32
    # logits as much as hone's merge), so the f32 gap is reported beside that noise
    # floor, not bounded. See docs/export.md.
    merged, info = AutoModelForCausalLM.from_pretrained(args.merged, dtype=torch.float32,
                                                        output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    gap32 = (last_logits(merged.eval(), ids) - ref).abs().max().item()
    floor = (last_logits(copy.deepcopy(peft_model).merge_and_unload().eval(), ids) - ref)
    floor = floor.abs().max().item()
    del merged
    m64 = AutoModelForCausalLM.from_pretrained(args.merged, dtype=torch.float64).eval()
    # The f64 reference: base + adapter on a plain float64 model holding the base's
    # dequantized weights (the safetensors copy interop.sh put in the local hub cache).
    # A base read from the GGUF keeps its blocks packed and multiplies in f32 whatever
    # dtype is asked for, and so does one whose config still names the GGUF.
    base64 = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.merged),
                                              dtype=torch.float64)
    weights = {k: v.double() for k, v in load_file(base_snapshot(cfg)).items()}
    missing, unexpected = base64.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    base64.tie_weights()
    ref64_model = PeftModel.from_pretrained(base64, args.adapter).to(torch.float64).eval()
    assert all(p.dtype == torch.float64 for p in ref64_model.parameters())
    assert all(p.dtype == torch.float64 for p in m64.parameters())
    x = torch.tensor([ids])
    with torch.no_grad():
        want64 = ref64_model(x).logits[0]
        gap64 = (m64(x).logits[0] - want64).abs().max().item()
    ref_noise = (ref.double() - want64).abs().max().item()
    check(not bad and gap64 < 1e-4, "3 merged f32 in transformers",
          f"loading info {bad or 'clean'}, f64 logit gap {gap64:.2e} over {len(ids)} "
          f"positions (logits up to {want64.abs().max().item():.1f}); in f32: gap "
          f"{gap32:.2e}, peft's own merge_and_unload {floor:.2e}, f32 reference vs f64 "
          f"{ref_noise:.2e}")
    SUMMARY["3 f32 noise"] = {"f32 gap": gap32, "peft merge gap": floor, "f32 ref vs f64": ref_noise}
    del m64, ref64_model
    m16 = AutoModelForCausalLM.from_pretrained(args.merged_bf16, dtype=torch.float32).eval()
    gap16 = (last_logits(m16, ids) - ref).abs().max().item()
    print(f"     merged bf16: max logit gap {gap16:.3f} (measured)")
    SUMMARY["3 merged bf16 gap"] = gap16

    # Check 4: llama.cpp.
    from llama_cpp import Llama
    prompts = [json.loads(l)["messages"] for l in Path(args.prompts).read_text().splitlines()
               if l.strip()]
    prompts = [[m for m in ms if m["role"] != "assistant"] for ms in prompts]
    want = [hone_answer(args, ms, args.max_tokens) for ms in prompts]
    export = Path(args.export)
    runs = [(f.stem, dict(model_path=str(f))) for f in sorted(export.glob("model-*.gguf"))]
    runs.append(("base + adapter-lora.gguf",
                 dict(model_path=args.gguf, lora_path=str(export / "adapter-lora.gguf"))))
    want_ids = [tok(w, add_special_tokens=False)["input_ids"] for w in want]
    for name, kw in runs:
        llm = Llama(n_ctx=1024, n_threads=2, verbose=False, seed=0, **kw)
        got = [llama_answer(llm, tok, ms, args.max_tokens) for ms in prompts]
        same = sum(g == w for g, w in zip(got, want))
        per = [first_divergence(tok(g, add_special_tokens=False)["input_ids"], w)
               for g, w in zip(got, want_ids)]
        detail = f"{same}/{len(want)} greedy answers equal hone f32's"
        if same < len(want):
            detail += "; first differing token per differing answer: " + ", ".join(
                f"#{i + 1}@{d}" for i, d in enumerate(per) if d is not None)
        for g, w in zip(got, want):
            if g != w:
                detail += f"; first differing: llama.cpp {g!r} vs hone {w!r}"
                break
        if name == "model-f16":
            check(same == len(want), "4 llama.cpp f16 export", detail)
        else:
            print(f"     llama.cpp {name}: {detail}", flush=True)
        SUMMARY[f"4 llama.cpp {name}"] = {
            "equal": same, "of": len(want), "first_divergence": per,
            "tokens": [len(w) for w in want_ids]}
        del llm
    if args.summary:
        Path(args.summary).write_text(json.dumps(SUMMARY, indent=2))
    print(f"interop: {len(SUMMARY)} results, {len(FAILS)} failed" + (f": {FAILS}" if FAILS else ""))
    sys.exit(1 if FAILS else 0)


def base_snapshot(adapter_cfg):
    """The base's `model.safetensors` in the local hub cache (HF_HUB_CACHE), under the
    adapter's `base_model_name_or_path`."""
    repo = adapter_cfg["base_model_name_or_path"].replace("/", "--")
    hits = sorted(Path(os.environ["HF_HUB_CACHE"]).glob(f"models--{repo}/snapshots/*/model.safetensors"))
    if not hits:
        sys.exit(f"no model.safetensors for {repo} under HF_HUB_CACHE")
    return str(hits[0])


def first_divergence(a, b):
    """The index of the first token where `a` and `b` differ (the shorter one's length if
    one is a prefix of the other), or None when they are equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def find_loss(ev):
    """The adapter model's chat-file loss in `hone eval --json` output."""
    stack = [ev]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if "loss" in v and "tokens" in v and isinstance(v["loss"], float):
                return v
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


if __name__ == "__main__":
    main()
