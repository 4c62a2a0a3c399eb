#!/usr/bin/env python3
"""Reference vectors for hone's embedding model (all-MiniLM-L6-v2).

Embeds a fixed corpus with sentence-transformers itself (its Transformer,
mean Pooling and Normalize modules, read from the model directory's
modules.json) and writes testdata/embeddings/all-minilm-l6-v2.json. The
ignored test `embed_real::matches_sentence_transformers` in hone-model
checks that hone's vectors have cosine >= 0.999 with these, sentence by
sentence.

sentence-transformers is not in the project venv; one way to run this:

    /work/cache/venv/bin/python -m venv /tmp/st-venv
    # reuse the venv's torch/transformers:
    /work/cache/venv/bin/python -c 'import site; print(site.getsitepackages()[0])' \
        > "$(/tmp/st-venv/bin/python -c 'import site; print(site.getsitepackages()[0])')/base.pth"
    /tmp/st-venv/bin/pip install --no-deps sentence-transformers && /tmp/st-venv/bin/pip install scipy scikit-learn
    /tmp/st-venv/bin/python scripts/make_embedding_vectors.py [MODEL_DIR]

MODEL_DIR defaults to $HONE_HOME/models/all-minilm-l6-v2 (what
`hone model fetch all-minilm-l6-v2` installs).
"""

import json
import os
import sys
from pathlib import Path

import sentence_transformers
from sentence_transformers import SentenceTransformer

# Short and long, cased and uncased, punctuation, digits, non-ASCII, and one
# text longer than the model's 256-token window (truncated by both sides).
CORPUS = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "hone fine-tunes small language models on a laptop CPU.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Embeddings map text to vectors; similar texts get nearby vectors.",
    "Invoice #4821 is due on 2026-03-15 for $1,299.00.",
    "Café, naïve, coöperate — résumé.",
    "def add(a, b):\n    return a + b",
    "x",
    "RETRIEVAL AUGMENTED GENERATION puts documents in the prompt.",
    "The warranty covers parts and labour for two years from the date of purchase. " * 30,
]


def main():
    home = os.environ.get("HONE_HOME", ".hone")
    model_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(home) / "models" / "all-minilm-l6-v2")
    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(CORPUS, batch_size=4, normalize_embeddings=False, convert_to_numpy=True)
    out = {
        "model": "all-minilm-l6-v2",
        "made_by": f"sentence-transformers {sentence_transformers.__version__} "
        "(scripts/make_embedding_vectors.py)",
        "max_seq_length": model.max_seq_length,
        "sentences": CORPUS,
        "vectors": [[round(float(x), 6) for x in v] for v in vectors],
    }
    path = Path(__file__).resolve().parent.parent / "testdata" / "embeddings" / "all-minilm-l6-v2.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    print(f"wrote {len(CORPUS)} vectors of {len(vectors[0])} floats to {path}")


if __name__ == "__main__":
    main()
