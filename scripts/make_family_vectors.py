#!/usr/bin/env python3
"""Reference vectors for hone's model families (issue #15), made with transformers.

Two parts, both deterministic:

  --tiny   Tiny random models, one per family variant hone must run, written to
           testdata/families/<name>/ as config.json + model.safetensors (f32),
           with logits.json: the f32 logits of every position for a fixed id
           sequence, from transformers' eager attention. Also
           testdata/families/rope_reference.json: RoPE inverse frequencies
           from transformers' own init functions (default, linear, llama3).

  --real   For the real GGUF files (assembled outside the repository, see
           --models-dir): the token ids of a short prompt rendered by the
           tokenizer transformers builds from the GGUF, the last-position
           logits of the dequantized f32 model (top-20 ids and values, and the
           max-abs of the whole vector), and a greedy 16-token continuation.
           Written to testdata/real/<name>.json.

Run from the repository root, in a venv with torch, transformers, gguf,
sentencepiece and safetensors:
    python scripts/make_family_vectors.py --tiny
    python scripts/make_family_vectors.py --real --models-dir /work/cache/models
"""

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ROOT / "testdata" / "families"
REAL = ROOT / "testdata" / "real"

# The fixed input of every tiny model: 12 ids, long enough for a sliding
# window of 4 and for RoPE scaling to change the angles.
INPUT_IDS = [1, 17, 42, 99, 3, 250, 7, 128, 64, 200, 5, 33]
VOCAB = 256


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def write_json(path: Path, obj, indent=1):
    """Crash-safe: temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def randomize(model, seed: int, one_plus_norm: bool):
    """transformers initializes norms to 1 (or 0 for Gemma's 1 + w) and biases
    to 0, which would hide a wrong norm convention or a missing bias: draw
    every parameter at random instead, norms around their neutral value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                neutral = 0.0 if one_plus_norm else 1.0
                p.copy_(neutral + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                # Small enough that tied logits stay in a range where 1e-4
                # absolute is a fair f32 tolerance.
                p.copy_(0.4 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def common(**kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base.update(kw)
    return base


def tiny_models():
    """(name, model class, config, what it covers)."""
    return [
        (
            "llama3_scaled",
            LlamaForCausalLM,
            LlamaConfig(
                **common(tie_word_embeddings=True),
                # A small base and original context so that all three llama3
                # bands (kept, smoothed, divided) occur among the 4 frequencies
                # and change the angles within 12 positions.
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 100.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
            ),
            "Llama 3.x: llama3 RoPE scaling, tied embeddings (as Llama 3.2)",
        ),
        (
            "llama_linear",
            LlamaForCausalLM,
            LlamaConfig(
                **common(tie_word_embeddings=False),
                rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
            ),
            "Llama: linear RoPE scaling, separate lm_head",
        ),
        (
            "qwen2",
            Qwen2ForCausalLM,
            Qwen2Config(
                **common(tie_word_embeddings=True),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            "Qwen2/2.5: q/k/v biases, tied embeddings",
        ),
        (
            "qwen3",
            Qwen3ForCausalLM,
            Qwen3Config(
                **common(tie_word_embeddings=True, head_dim=16),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            "Qwen3: per-head q/k RMSNorm, head_dim (16) != hidden / heads (8), no bias",
        ),
        (
            "gemma3",
            Gemma3ForCausalLM,
            Gemma3TextConfig(
                **common(
                    num_hidden_layers=4,
                    num_attention_heads=2,
                    num_key_value_heads=1,
                    head_dim=24,
                    tie_word_embeddings=True,
                ),
                hidden_activation="gelu_pytorch_tanh",
                query_pre_attn_scalar=20,
                sliding_window=4,
                layer_types=[
                    "sliding_attention",
                    "sliding_attention",
                    "full_attention",
                    "sliding_attention",
                ],
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                },
                final_logit_softcapping=None,
                attn_logit_softcapping=None,
            ),
            "Gemma 3: (1+w) RMSNorm, sqrt(hidden) embedding scale, GELU-tanh, four norms per "
            "layer, q/k norms, query_pre_attn_scalar, sliding window 4 with its own RoPE base "
            "alternating with linear-scaled global layers, tied embeddings",
        ),
        (
            "gemma3_softcap",
            Gemma3ForCausalLM,
            Gemma3TextConfig(
                **common(
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    num_key_value_heads=1,
                    head_dim=16,
                    tie_word_embeddings=True,
                ),
                query_pre_attn_scalar=16,
                sliding_window=3,
                layer_types=["sliding_attention", "full_attention"],
                final_logit_softcapping=8.0,
                attn_logit_softcapping=1.5,
            ),
            "Gemma 3 with final_logit_softcapping 8 and attn_logit_softcapping 1.5 (both null in "
            "released Gemma 3; transformers' Gemma 3 ignores the attention one, so these logits do "
            "too) and transformers' default RoPE bases (1e6 global, 1e4 local)",
        ),
    ]


def spec_inv_freq(params: dict, dim: int, max_pos: int) -> torch.Tensor:
    """RoPE inverse frequencies as hone_model::family::RopeSpec computes them."""
    theta = params["rope_theta"]
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "linear":
        return inv / params["factor"]
    if kind == "llama3":
        factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old = params.get("original_max_position_embeddings", max_pos)
        out = []
        for f in inv.tolist():
            wavelen = 2 * math.pi / f
            if wavelen < old / high:
                out.append(f)
            elif wavelen > old / low:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        return torch.tensor(out, dtype=torch.float32)
    assert kind == "default", kind
    return inv


def spec_forward(model_dir: Path, ids: list) -> torch.Tensor:
    """The block of hone_model::family's module doc, written from config.json
    and the safetensors alone: checks that the spec describes the families
    completely (a step it misses would make these logits differ from
    transformers')."""
    from safetensors.torch import load_file

    c = json.loads((model_dir / "config.json").read_text())
    w = load_file(model_dir / "model.safetensors")
    gemma = c["model_type"] == "gemma3_text"
    h, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or h // nh
    eps, offset = c["rms_norm_eps"], (1.0 if gemma else 0.0)
    t = len(ids)

    def norm(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (w[name] + offset)

    def rope(x, inv):
        ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    rp = c["rope_parameters"]
    if gemma:
        inv = {k: spec_inv_freq(v, hd, c["max_position_embeddings"]) for k, v in rp.items()}
        scale = c["query_pre_attn_scalar"] ** -0.5
    else:
        inv = {"full_attention": spec_inv_freq(rp, hd, c["max_position_embeddings"])}
        scale = hd**-0.5
    kinds = c.get("layer_types") or ["full_attention"] * c["num_hidden_layers"]
    x = w["model.embed_tokens.weight"][ids] * (torch.tensor(h**0.5) if gemma else 1.0)
    for i, kind in enumerate(kinds):
        p = f"model.layers.{i}."
        a = norm(x, p + "input_layernorm.weight")
        proj = lambda n: a @ w[p + f"self_attn.{n}_proj.weight"].T + w.get(
            p + f"self_attn.{n}_proj.bias", torch.zeros(())
        )
        q = proj("q").view(t, nh, hd).transpose(0, 1)
        k = proj("k").view(t, nkv, hd).transpose(0, 1)
        v = proj("v").view(t, nkv, hd).transpose(0, 1)
        if p + "self_attn.q_norm.weight" in w:
            q, k = norm(q, p + "self_attn.q_norm.weight"), norm(k, p + "self_attn.k_norm.weight")
        q, k = rope(q, inv[kind]), rope(k, inv[kind])
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        s = q @ k.transpose(1, 2) * scale
        # No attn_logit_softcapping: transformers' Gemma 3 does not apply it.
        qi, kj = torch.arange(t)[:, None], torch.arange(t)[None, :]
        visible = kj <= qi
        if kind == "sliding_attention":
            visible &= kj > qi - c["sliding_window"]
        s = s.masked_fill(~visible, float("-inf")).softmax(-1)
        o = (s @ v).transpose(0, 1).reshape(t, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
        if gemma:
            o = norm(o, p + "post_attention_layernorm.weight")
        x = x + o
        f = norm(x, p + ("pre_feedforward_layernorm.weight" if gemma else "post_attention_layernorm.weight"))
        gate = f @ w[p + "mlp.gate_proj.weight"].T
        act = torch.nn.functional.gelu(gate, approximate="tanh") if gemma else torch.nn.functional.silu(gate)
        f = (act * (f @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        if gemma:
            f = norm(f, p + "post_feedforward_layernorm.weight")
        x = x + f
    x = norm(x, "model.norm.weight")
    logits = x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T
    if c.get("final_logit_softcapping"):
        cap = c["final_logit_softcapping"]
        logits = cap * torch.tanh(logits / cap)
    return logits


def make_tiny():
    FAMILIES.mkdir(parents=True, exist_ok=True)
    index = {}
    for seed, (name, cls, config, covers) in enumerate(tiny_models()):
        torch.manual_seed(seed)
        config._attn_implementation = "eager"
        model = cls(config).float().eval()
        randomize(model, 1000 + seed, one_plus_norm=cls is Gemma3ForCausalLM)
        out = FAMILIES / name
        model.save_pretrained(out, safe_serialization=True)
        for extra in ["generation_config.json"]:
            (out / extra).unlink(missing_ok=True)
        with torch.no_grad():
            ids = torch.tensor([INPUT_IDS])
            logits = model(input_ids=ids).logits[0].float()
        write_json(
            out / "logits.json",
            {
                "covers": covers,
                "produced_with": versions(),
                "input_ids": INPUT_IDS,
                "shape": list(logits.shape),
                "logits": [[float(x) for x in row] for row in logits],
            },
            indent=None,
        )
        with torch.no_grad():
            gap = (spec_forward(out, INPUT_IDS) - logits).abs().max().item()
        if gap > 1e-5:
            sys.exit(f"{name}: the spec's block differs from transformers by {gap}")
        size = (out / "model.safetensors").stat().st_size
        index[name] = {"covers": covers, "safetensors_bytes": size}
        print(
            f"{name}: {size} bytes, logits max-abs {logits.abs().max():.4f}, "
            f"spec block vs transformers {gap:.2e}",
            file=sys.stderr,
        )
    write_json(FAMILIES / "index.json", {"produced_with": versions(), "models": index})
    make_rope_reference()


def make_rope_reference():
    """Inverse frequencies straight from transformers' RoPE init functions."""
    cases = [
        ("llama3_2_real", dict(head_dim=64, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192})),
        ("llama3_1_real", dict(head_dim=128, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192})),
        ("llama3_tiny", dict(head_dim=8, rope_parameters={
            "rope_type": "llama3", "rope_theta": 100.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32})),
        ("linear", dict(head_dim=64, rope_parameters={
            "rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})),
        ("default", dict(head_dim=64, rope_parameters={
            "rope_type": "default", "rope_theta": 1000000.0})),
    ]
    out = {"produced_with": versions(), "cases": {}}
    for name, kw in cases:
        head_dim = kw.pop("head_dim")
        cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                          max_position_embeddings=131072, **kw)
        params = dict(cfg.rope_parameters)
        kind = params["rope_type"]
        if kind == "default":
            inv = 1.0 / (params["rope_theta"] ** (
                torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        else:
            inv, _ = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")
        out["cases"][name] = {"head_dim": head_dim, "rope_parameters": params,
                              "inv_freq": [float(x) for x in inv.float()]}
    write_json(FAMILIES / "rope_reference.json", out)


REAL_MODELS = {
    # name: (file, sha256 of the assembled file, prompt kind)
    "qwen2.5-coder-0.5b-instruct": (
        "qwen2.5-coder-0.5b-instruct-q4.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "chat",
    ),
    "gemma-3-270m": (
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "text",
    ),
}

CHAT = [{"role": "user", "content": "Write a Python function that returns the square of a number."}]
TEXT = "The capital of France is"
# Longer than Gemma 3 270m's sliding window (512), so that its local layers
# must drop the oldest keys for the last position.
LONG_TEXT = " ".join(
    f"Note {i}: the river passes the mill, the bridge and the old school before it reaches the sea."
    for i in range(1, 31)
)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def summary(logits):
    """Top-20 ids and values of a logits vector, and its max-abs for scale."""
    top = torch.topk(logits, 20)
    return {
        "top20_ids": top.indices.tolist(),
        "top20_values": [float(x) for x in top.values],
        "max_abs": float(logits.abs().max()),
        "vocab": int(logits.shape[0]),
    }


def make_real(models_dir: Path, only):
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    for name, (file, digest, kind) in REAL_MODELS.items():
        if only and name not in only:
            continue
        path = models_dir / file
        actual = sha256(path)
        if actual != digest:
            sys.exit(f"{path}: sha256 {actual}, expected {digest}")
        tok = AutoTokenizer.from_pretrained(models_dir, gguf_file=file)
        if kind == "chat":
            prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
        else:
            # gemma-3-270m is a base model whose GGUF has no chat template:
            # a plain prompt, with the BOS the tokenizer adds.
            prompt = TEXT
            ids = tok(prompt)["input_ids"]
        model = AutoModelForCausalLM.from_pretrained(
            models_dir, gguf_file=file, dtype=torch.float32
        ).eval()
        model.config._attn_implementation = "eager"
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            gen = model.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=16,
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            )[0, len(ids):].tolist()
        long_ids = tok(LONG_TEXT)["input_ids"]
        assert len(long_ids) > 600, len(long_ids)
        with torch.no_grad():
            long_logits = model(input_ids=torch.tensor([long_ids])).logits[0, -1].float()
        write_json(
            REAL / f"{name}.json",
            {
                "model": f"{file} (sha256 {digest}), weights dequantized to f32 by transformers' GGUF loader",
                "produced_with": versions(),
                "architecture": {"model_type": model.config.model_type, "class": type(model).__name__},
                "prompt_kind": kind,
                "messages": CHAT if kind == "chat" else None,
                "prompt": prompt,
                "input_ids": ids,
                "last_logits": summary(logits),
                "greedy_16": {"ids": gen, "text": tok.decode(gen)},
                "long_prompt": {
                    "text": LONG_TEXT,
                    "input_ids": long_ids,
                    "last_logits": summary(long_logits),
                },
            },
        )
        print(f"{name}: {len(ids)} prompt ids, greedy: {tok.decode(gen)!r}", file=sys.stderr)
        del model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--models-dir", type=Path, default=Path("/work/cache/models"))
    ap.add_argument("--only", nargs="*", help="real model names to redo")
    args = ap.parse_args()
    if not (args.tiny or args.real):
        ap.error("pass --tiny and/or --real")
    if args.tiny:
        make_tiny()
    if args.real:
        make_real(args.models_dir, args.only)


if __name__ == "__main__":
    main()
