#!/usr/bin/env python3
"""Reference token ids for hone's GGUF tokenizers, made with transformers' own
GGUF loader (`AutoTokenizer.from_pretrained(dir, gguf_file=NAME)`).

Writes, under testdata/tokenizers/:
  qwen2.5-coder-0.5b-instruct.json  ids for the real Qwen2.5-Coder GGUF (pre "qwen2")
  gemma-3-270m.json                 ids for the real Gemma 3 270M GGUF (SentencePiece)
  synthetic-bpe.gguf                a tiny byte-level BPE trained here (no real
                                    Llama 3 file is reachable), with its vectors for
  synthetic-bpe.json                pre "llama-bpe" and pre "qwen2"
  synthetic-spm.gguf / .json        a Gemma-style vocabulary cut from the real one

Usage (needs torch, transformers, gguf, sentencepiece, tokenizers, jinja2; made with
transformers 5.25.0, tokenizers 0.23.3):
  python scripts/make_tokenizer_vectors.py --qwen PATH.gguf --gemma PATH.gguf
The real files come from `hone model fetch qwen2.5-coder-0.5b-instruct` and
`hone model fetch gemma-3-270m`.
"""

import argparse
import hashlib
import json
import os
import tempfile

import gguf
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata", "tokenizers")

# English, code, CJK, emoji, leading spaces, digits, newlines and whitespace runs.
CORPUS = [
    "Hello",
    " Hello",
    "Hello world",
    "  two leading spaces",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say we've done it, and he'd agree. THEY'RE LOUD'S",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}\n",
    "for (int i = 0; i < 10; ++i) { x[i] = i * 3.14159; }",
    "<div class=\"a\">&nbsp;</div>",
    "東京は日本の首都です。我爱北京天安门。",
    "한국어 텍스트와 Ελληνικά και русский текст",
    "emoji 🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "digits 1 12 123 1234 12345 3.14 -42 1e10 2026-12-05",
    "line1\nline2\n\nline4\n\n\n",
    "tabs\tand\t\tspaces    end   ",
    "   \n  \n\t\n",
    "trailing spaces   ",
    "café naïve résumé Ångström",
    "mixed: Hello,世界! 123abc ABC123 _under_score snake_case CamelCase",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "<start_of_turn>user\nHi<end_of_turn>\n",
    "",
]

CHAT = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 東京?"},
    ],
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(path):
    return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))


def cases(tok, texts):
    out = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        out.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
    return out


def specials(tok):
    return {
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "vocab_size": len(tok),
    }


def chat_cases(tok, template=None):
    """Renders CHAT with the file's template, or with `template` (hone's
    fallback for a file that has none)."""
    out = []
    if not (template or tok.chat_template):
        return out
    for messages in CHAT:
        for add in (False, True):
            rendered = tok.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=add
            )
            out.append({"messages": messages, "add_generation_prompt": add, "rendered": rendered})
    return out


def write_json(name, data):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", path)


# hone's template for a Gemma file without one (Gemma 3 instruct's own).
GEMMA3_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "hone-text", "src", "templates", "gemma3.jinja")


def real(path, name, extra, template=None):
    tok = load(path)
    write_json(
        name,
        {
            "gguf_file": os.path.basename(path),
            "gguf_sha256": sha256(path),
            "made_with": "transformers GGUF loader, encode(add_special_tokens=False)",
            **specials(tok),
            **extra(tok),
            "tokenizer": cases(tok, CORPUS),
            "chat_template": chat_cases(tok, template),
        },
    )


def byte_level_alphabet():
    return pre_tokenizers.ByteLevel.alphabet()


LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def synthetic_bpe():
    """A 700-token byte-level BPE trained on the corpus, saved as GGUF."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=sorted(byte_level_alphabet()), show_progress=False)
    tok.train_from_iterator(CORPUS * 3 + [" ".join(CORPUS)], trainer)
    state = json.loads(tok.to_str())["model"]
    vocab = sorted(state["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    specials_ = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    types = [1] * len(tokens) + [3] * len(specials_)
    tokens += specials_
    path = os.path.join(OUT, "synthetic-bpe.gguf")
    write_gguf(path, "llama", "gpt2", "llama-bpe", tokens, types, merges=merges,
               bos=tokens.index("<|begin_of_text|>"), eos=tokens.index("<|end_of_text|>"),
               eot=tokens.index("<|eot_id|>"))
    data = {"gguf_file": "synthetic-bpe.gguf", "made_with": "transformers GGUF loader"}
    with tempfile.TemporaryDirectory() as d:
        for pre in ("llama-bpe", "qwen2"):
            p = os.path.join(d, f"{pre}.gguf")
            write_gguf(p, "llama", "gpt2", pre, tokens, types, merges=merges,
                       bos=tokens.index("<|begin_of_text|>"), eos=tokens.index("<|end_of_text|>"),
                       eot=tokens.index("<|eot_id|>"))
            t = load(p)
            data[pre] = {**specials(t), "tokenizer": cases(t, CORPUS)}
    write_json("synthetic-bpe.json", data)


def synthetic_spm(gemma_path):
    """The real Gemma vocabulary cut down to the specials, the 256 byte
    tokens and the pieces that occur in the corpus (in their original order,
    which is what sets Gemma's merge priority)."""
    r = gguf.GGUFReader(gemma_path)
    field = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    tt = r.fields["tokenizer.ggml.token_type"]
    types = [int(tt.parts[i][0]) for i in tt.data]
    sc = r.fields["tokenizer.ggml.scores"]
    scores = [float(sc.parts[i][0]) for i in sc.data]
    text = "\n".join(CORPUS).replace(" ", "\u2581")
    keep = [
        i for i, t in enumerate(tokens)
        if i < 200 or types[i] in (3, 6) and (i < 300 or t.startswith("<0x")) or (types[i] in (1, 4) and t in text)
    ]
    # Whitespace-only pieces are stored with real spaces.
    keep += [i for i, t in enumerate(tokens) if t and not t.strip() and " " in t and len(t) < 8 and i not in keep]
    keep = sorted(set(keep))
    new = {old: n for n, old in enumerate(keep)}
    path = os.path.join(OUT, "synthetic-spm.gguf")
    write_gguf(path, "gemma3", "llama", "default", [tokens[i] for i in keep], [types[i] for i in keep],
               scores=[scores[i] for i in keep], bos=new[2], eos=new[1], unk=new[3])
    t = load(path)
    write_json("synthetic-spm.json", {"gguf_file": "synthetic-spm.gguf", "made_with": "transformers GGUF loader",
                                      **specials(t), "tokenizer": cases(t, CORPUS)})


def write_gguf(path, arch, model, pre, tokens, types, merges=None, scores=None, bos=None, eos=None, eot=None, unk=None):
    w = gguf.GGUFWriter(path, arch)
    # Enough of a config for transformers to load the tokenizer.
    w.add_context_length(128)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    if eot is not None:
        w.add_eot_token_id(eot)
    if unk is not None:
        w.add_unk_token_id(unk)
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qwen", required=True)
    ap.add_argument("--gemma", required=True)
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    real(a.qwen, "qwen2.5-coder-0.5b-instruct.json",
         lambda t: {"eot": t.convert_tokens_to_ids("<|im_end|>")})
    with open(GEMMA3_TEMPLATE, encoding="utf-8") as f:
        gemma_template = f.read()
    real(a.gemma, "gemma-3-270m.json",
         lambda t: {"eot": t.convert_tokens_to_ids("<end_of_turn>")}, gemma_template)
    synthetic_bpe()
    synthetic_spm(a.gemma)


if __name__ == "__main__":
    main()
