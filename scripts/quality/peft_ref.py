#!/usr/bin/env python3
"""The reference fine-tune for the quality suite (issue #18): transformers + peft, a
plain training loop with the common LoRA recipe, on the same GGUF hone trains on
(dequantized to f32 by transformers). It writes a PEFT adapter that `hone eval` then
scores with the same cases and the same greedy decoding as hone's own adapter, so the
two differ only in how they were trained.

SFT recipe (the usual peft/TRL starting point): LoRA r=16, alpha=32, dropout 0.05 on all
linear projections, AdamW lr 2e-4, 3 epochs, batch 4, linear decay after 3% warmup,
gradient clipping at 1.0, loss on assistant tokens only (turns with `weight: 0` are
context, not targets), mean over the batch's target tokens, fp32.

DPO recipe: the same LoRA, beta 0.1, lr 5e-4, batch 1, 2 epochs, constant LR, the
reference model being the base with the adapter switched off (as in peft + TRL).

    peft_ref.py --gguf FILE --data train.jsonl --out DIR [--method sft|dpo] [--seed N]
"""

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def renders_tools(tok):
    """Whether the template writes a tool's name when given `tools` (hone asks its
    template the same question, `hone_text::template::probe_tools`)."""
    probe = "hone_probe_function_name"
    tools = [{"type": "function", "function": {"name": probe, "description": "probe",
                                               "parameters": {"type": "object", "properties": {}}}}]
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=tools,
                                       add_generation_prompt=True, tokenize=False)
    except Exception:
        return False
    return probe in text


def dumps(v):
    return json.dumps(v, ensure_ascii=False)


def tools_system_text(tools):
    """hone_text::tool_calls::tools_system_text (Qwen2.5's own words)."""
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
            + "".join("\n" + dumps(t) for t in tools)
            + "\n</tools>\n\nFor each function call, return a json object with function name and "
            "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")


def fallback_messages(messages, tools):
    """hone_text::tool_calls::fallback_messages: the chat as hone gives it to a template
    that cannot render tools (the tool list in the system message, calls as
    `<tool_call>` text, tool results as a user message of `<tool_response>` blocks)."""
    out, rest = [], messages
    if tools:
        block = tools_system_text(tools)
        if messages and messages[0]["role"] == "system":
            out.append(dict(messages[0], content=f"{messages[0]['content']}\n\n{block}"))
            rest = messages[1:]
        else:
            out.append({"role": "system", "content": block})
    after_tool = False
    for m in rest:
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if after_tool:
                out[-1] = dict(out[-1], content=f"{out[-1]['content']}\n{block}")
            else:
                out.append({"role": "user", "content": block})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            parts = [m["content"]] if m.get("content") else []
            for call in m["tool_calls"]:
                f = call.get("function", call)
                args = decoded(f.get("arguments", {}))
                parts.append(f"<tool_call>\n{{\"name\": {dumps(f.get('name'))}, \"arguments\": {dumps(args)}}}\n</tool_call>")
            out.append({k: v for k, v in m.items() if k != "tool_calls"} | {"content": "\n".join(parts)})
        else:
            out.append(m)
        after_tool = m["role"] == "tool"
    return out


def decoded(arguments):
    """OpenAI sends a call's arguments as a JSON string; chat templates (Qwen's
    `arguments | tojson`) want the object, as hone gives them (a string that is not
    JSON stays a string)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def with_object_arguments(m):
    if not m.get("tool_calls"):
        return m
    calls = []
    for call in m["tool_calls"]:
        f = call.get("function", call)
        f = dict(f, arguments=decoded(f.get("arguments", {})))
        calls.append(dict(call, function=f) if "function" in call else f)
    return dict(m, tool_calls=calls)


def render(tok, messages, tools=None):
    """Token ids of a chat and per-token 0/1 targets: the text each trained assistant
    turn adds after the generation prompt, up to and including its end-of-turn token.
    A template that cannot render tools gets hone's fallback text, as in hone."""
    if not renders_tools(tok) and (tools or any(m.get("tool_calls") or m["role"] == "tool"
                                                for m in messages)):
        messages, tools = fallback_messages(messages, tools), None
    else:
        messages = [with_object_arguments(m) for m in messages]
    kw = {"tools": tools} if tools else {}
    full = tok.apply_chat_template(messages, tokenize=False, **kw)
    ids, tgt, pos = [], [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True, **kw)
        upto = tok.apply_chat_template(messages[: i + 1], tokenize=False, **kw)
        answer = upto[len(before):].rstrip("\n")
        if not (full.startswith(before) and full.startswith(before + answer)):
            sys.exit("the chat template does not render turns as prefixes of the whole chat")
        pre = tok(full[pos:len(before)], add_special_tokens=False)["input_ids"]
        ans = tok(answer, add_special_tokens=False)["input_ids"]
        ids += pre + ans
        tgt += [0] * len(pre) + [1] * len(ans)
        pos = len(before) + len(answer)
    rest = tok(full[pos:], add_special_tokens=False)["input_ids"]
    return ids + rest, tgt + [0] * len(rest)


def batch_logp(model, seqs):
    """Per-sequence summed log-probs of the target tokens, and the target-token count."""
    width = max(len(ids) for ids, _ in seqs)
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    att = torch.zeros(len(seqs), width, dtype=torch.long)
    m = torch.zeros(len(seqs), width, dtype=torch.bool)
    for r, (ids, tgt) in enumerate(seqs):
        x[r, :len(ids)] = torch.tensor(ids)
        att[r, :len(ids)] = 1
        m[r, :len(ids)] = torch.tensor(tgt, dtype=torch.bool)
    logits = model(input_ids=x, attention_mask=att).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, x[:, 1:, None])[..., 0]
    mask = m[:, 1:]
    return (logp * mask).sum(-1), mask.sum()


# hone's templates for a GGUF that ships none (hone_text::template::family_default): Gemma 3's
# own for a Gemma, else ChatML. The reference must render the same text hone trains on.
HONE_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates",
                              "hone-text", "src", "templates")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
          " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")


def load(gguf):
    d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    use_hone_default_template(tok, model.config.model_type, f)
    return tok, model


def use_hone_default_template(tok, model_type, name):
    """Gives `tok` hone's template for its family when the GGUF ships none."""
    if tok.chat_template:
        return
    if model_type.startswith("gemma"):
        with open(os.path.join(HONE_TEMPLATES, "gemma3.jinja")) as t:
            tok.chat_template = t.read()
    else:
        tok.chat_template = CHATML
    print(f"{name} has no chat template: using hone's default for {model_type}", file=sys.stderr)


def lr_at(step, total, base, warmup_ratio, schedule):
    warm = int(total * warmup_ratio)
    if step < warm:
        return base * (step + 1) / warm
    if schedule == "constant":
        return base
    return base * max(0.0, (total - step) / max(1, total - warm))


def train(args):
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tok, model = load(args.gguf)
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = [json.loads(line) for line in open(args.data) if line.strip()]
    if args.method == "sft":
        items = [render(tok, r["messages"], r.get("tools")) for r in rows]
    else:
        items = []
        for r in rows:
            msgs, tools = r["input"]["messages"], r["input"].get("tools")
            items.append((render(tok, msgs + r["preferred_output"], tools),
                          render(tok, msgs + r["non_preferred_output"], tools)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    steps_per_epoch = (len(items) + args.batch - 1) // args.batch
    total, step, t0 = steps_per_epoch * args.epochs, 0, time.time()
    model.train()
    for epoch in range(args.epochs):
        order = list(range(len(items)))
        random.shuffle(order)
        for s in range(steps_per_epoch):
            batch = [items[i] for i in order[s * args.batch:(s + 1) * args.batch]]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, args.lr, args.warmup_ratio, args.schedule)
            if args.method == "sft":
                logp, n = batch_logp(model, batch)
                loss = -logp.sum() / n.clamp(min=1)
            else:
                seqs = [c for pair in batch for c in pair]
                pol, _ = batch_logp(model, seqs)
                with torch.no_grad(), model.disable_adapter():
                    ref, _ = batch_logp(model, seqs)
                d = (pol - ref).view(-1, 2)
                loss = -torch.nn.functional.logsigmoid(args.beta * (d[:, 0] - d[:, 1])).mean()
            loss.backward()
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            opt.zero_grad()
            step += 1
            # Every step, so the curve compares with hone's step events.
            print(f"epoch {epoch + 1} step {step}/{total} loss {loss.item():.4f}", file=sys.stderr)
    model.save_pretrained(args.out)
    print(json.dumps({"seconds": round(time.time() - t0, 1), "steps": total, "examples": len(items)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--method", choices=["sft", "dpo"], default="sft")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--warmup-ratio", type=float)
    p.add_argument("--schedule", choices=["linear", "constant"])
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.1)
    a = p.parse_args()
    sft = a.method == "sft"
    for k, v_sft, v_dpo in [("lr", 2e-4, 5e-4), ("epochs", 3, 2), ("batch", 4, 1), ("warmup_ratio", 0.03, 0.0),
                            ("schedule", "linear", "constant")]:
        if getattr(a, k) is None:
            setattr(a, k, v_sft if sft else v_dpo)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    train(a)


if __name__ == "__main__":
    main()
