"""A hone adapter loads in Python `peft` and generates what hone generates.

Issue #15, "the PEFT adapter loads in Python peft on the transformers model
without missing or unexpected keys". The base model is read by transformers
from the same GGUF hone trained on (dequantized to f32); the adapter is the
directory `hone train` (or a fine-tuning job) wrote. The script checks:

1. peft's `set_peft_model_state_dict` reports no unexpected key and no missing
   `lora_*` key (the base weights are "missing" from an adapter by design); with
   trainable token rows (`trainable_token_indices`, peft >= 0.15), peft's embedding
   and its LM head (tied, or untied with its own rows) use the file's rows for those ids;
2. the adapter changes the answer (a zero adapter would pass 1 and 3);
3. greedy decoding with peft gives the same text as
   `hone chat --weights f32 --adapter DIR` on the same prompt. hone's f32 path
   matches transformers' logits within 1e-4 (crates/hone-model tests), so the
   texts must be equal; the one tolerance: if they part, transformers' top two
   logits at that token must be within TIE_TOLERANCE (a near-tie that float
   rounding may break either way), and at least MIN_EQUAL_TOKENS tokens must
   agree before it.

Usage (scripts/test.sh runs it in target/hf-venv with tests/hf/requirements.txt):
    python tests/hf/check_peft_adapter.py --hone target/release/hone \
        --gguf qwen.gguf --adapter runs/quickstart/adapter

Exit 0 when every check passed.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # one bar line per GGUF tensor fills CI logs
import torch  # noqa: E402 (after TQDM_DISABLE)
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parents[2]
# hone's f32 logits are within 1e-4 of transformers'; a near-tie below 1e-3
# may flip either way.
TIE_TOLERANCE = 1e-3
MIN_EQUAL_TOKENS = 8
MAX_TOKENS = 32


STARTED = time.time()


def step(msg: str) -> None:
    print(f"-- {msg} (+{time.time() - STARTED:.0f} s)", flush=True)


def prompt_messages() -> list:
    """The first held-out case of the bundled example (what quickstart trains)."""
    line = (ROOT / "examples" / "support" / "eval.jsonl").read_text().splitlines()[0]
    return json.loads(line)["messages"]


def load_base(gguf: Path):
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.eval()
    return tok, model


def attach_adapter(model, adapter: Path):
    """peft model with hone's adapter; fails on any unexpected or missing lora key."""
    config = LoraConfig.from_pretrained(str(adapter))
    peft_model = get_peft_model(model, config)
    state = load_file(str(adapter / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if "lora_" in k or "trainable_tokens" in k]
    assert not unexpected, f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}"
    assert not missing, f"{len(missing)} missing lora keys, e.g. {missing[:5]}"
    adapter_params = ("lora_", "trainable_tokens_delta")
    n_lora = sum(1 for k, _ in peft_model.named_parameters() if any(a in k for a in adapter_params))
    assert n_lora == len(state), f"peft has {n_lora} adapter tensors, the file {len(state)}"
    print(f"   {len(state)} tensors loaded, none unexpected, no lora key missing")
    peft_model.eval()
    check_token_rows(peft_model, config, state)
    return peft_model


ROWS_KEY = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
HEAD_ROWS_KEY = "base_model.model.lm_head.token_adapter.trainable_tokens_delta"


@torch.no_grad()
def check_token_rows(peft_model, config, state) -> None:
    """With `trainable_token_indices`: peft's input embeddings of those ids are the
    file's rows, and its LM head's logits of those ids come from the head's rows: the
    embedding's when tied (a list of ids), the head's own when untied (a map naming
    `embed_tokens` and `lm_head`, as hone writes it for an untied model)."""
    spec = config.trainable_token_indices
    if not spec:
        return
    ids = spec["embed_tokens"] if isinstance(spec, dict) else spec
    rows = state[ROWS_KEY].float()
    ids_t = torch.tensor([ids])
    emb = peft_model.get_input_embeddings()(ids_t)[0].float()
    assert torch.allclose(emb, rows, atol=1e-6), "peft's embedding does not use the rows"
    tied = peft_model.config.tie_word_embeddings
    head = rows if tied else state.get(HEAD_ROWS_KEY)
    if head is not None:
        assert isinstance(spec, dict) != tied, f"trainable_token_indices {spec} on a tied={tied} model"
        out = peft_model(input_ids=ids_t, output_hidden_states=True)
        hidden = out.hidden_states[-1][0].float()
        want = hidden @ head.float().T
        got = out.logits[0].float()[:, ids]
        gap = float((got - want).abs().max())
        assert gap < 1e-3, f"peft's LM head does not use the rows (max diff {gap:.2e})"
    where = {True: " and tied LM head", False: " and the LM head's own rows"}[tied]
    print(f"   peft uses the {len(ids)} trained token rows {ids} (embedding"
          f"{where if head is not None else ''})")


@torch.no_grad()
def greedy(model, ids: torch.Tensor, eos: list) -> tuple:
    """Greedy tokens and, for each, the gap between its top two raw logits."""
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=MAX_TOKENS, eos_token_id=eos, pad_token_id=eos[0],
                         output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    gaps = []
    for logits in out.logits:
        top = torch.topk(logits[0].float(), 2).values
        gaps.append(float(top[0] - top[1]))
    while tokens and tokens[-1] in eos:
        tokens.pop()
    return tokens, gaps


def hone_answer(hone: str, gguf: Path, adapter: Path, messages: list) -> str:
    system = next(m["content"] for m in messages if m["role"] == "system")
    user = next(m["content"] for m in messages if m["role"] == "user")
    cmd = [hone, "chat", "--model", str(gguf), "--weights", "f32", "--adapter", str(adapter),
           "--temperature", "0", "--max-tokens", str(MAX_TOKENS), "--system", system, user]
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, NO_COLOR="1"))
    assert r.returncode == 0, f"hone chat failed:\n{r.stderr}"
    return r.stdout.strip()


def compare(tok, hone_text: str, ids: list, gaps: list) -> None:
    """hone's text equals peft's, or parts only at a near-tie after MIN_EQUAL_TOKENS."""
    peft_text = tok.decode(ids, skip_special_tokens=True).strip()
    print(f"   peft: {peft_text!r}\n   hone: {hone_text!r}")
    if peft_text == hone_text:
        return
    n = 0  # tokens of peft's answer that hone's text starts with
    while n < len(ids) and hone_text.startswith(
            tok.decode(ids[:n + 1], skip_special_tokens=True).strip()):
        n += 1
    assert n >= MIN_EQUAL_TOKENS, f"texts part after {n} tokens"
    assert n < len(gaps), "hone's answer goes on where peft's stopped"
    assert gaps[n] < TIE_TOLERANCE, (
        f"texts part at token {n} where peft's top-2 logit gap is {gaps[n]:.2e} "
        f"(>= {TIE_TOLERANCE}): not a near-tie")
    print(f"   they part at token {n}, a near-tie (gap {gaps[n]:.2e})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hone", default=str(ROOT / "target" / "release" / "hone"))
    ap.add_argument("--gguf", required=True, type=Path, help="the base model GGUF")
    ap.add_argument("--adapter", required=True, type=Path, help="a PEFT adapter dir hone wrote")
    args = ap.parse_args()
    torch.manual_seed(0)
    hf_logging.disable_progress_bar()

    step(f"transformers loads {args.gguf.name}")
    tok, base = load_base(args.gguf)
    messages = prompt_messages()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    eos = sorted({tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
                 | {tok.eos_token_id})
    base_ids, _ = greedy(base, ids, eos)

    step("peft loads the adapter")
    model = attach_adapter(base, args.adapter)
    ft_ids, gaps = greedy(model, ids, eos)
    assert ft_ids != base_ids, "the adapter does not change the greedy answer"

    step("hone chat --weights f32 --adapter gives the same greedy text")
    compare(tok, hone_answer(args.hone, args.gguf, args.adapter, messages), ft_ids, gaps)
    print(f"peft adapter check: all passed ({time.time() - STARTED:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
