"""Writes data/acceptability/: two small downstream tasks for the pre-training experiments,
made from data/moby_dick (run fetch_moby_dick.py first), each the question CoLA asks of English
(is this acceptable?) scaled down to bytes. An example is a run of whole words of Moby-Dick, at
most 63 bytes, as [CLS] and its bytes in data/bytes_bert's ids (padded with [PAD] to 64 tokens,
`attention_mask` 0 there); half of them, drawn at random, are spoiled, and the label is 1 for
text as Melville wrote it, 0 for spoiled:

- word_order_*: two of its words (different ones) swapped;
- spelling_*: two neighbouring, different letters of one word of three or more swapped.

Training examples come from train.txt (6400), held-out ones from heldout.txt (512, other
chapters). Batches as `lmc train --data` reads them: input_ids and attention_mask
[steps, 16, 64], labels [steps, 16]. Deterministic (seeded random.Random); Python's standard
library only.

    python3 data/make_acceptability.py
"""

import json
import pathlib
import random
import struct

DATA = pathlib.Path(__file__).resolve().parent
SEQ = 64
BATCH = 16
PAD, CLS, FIRST_BYTE = 0, 2, 5
SETS = {"train": ("train.txt", 400), "heldout": ("heldout.txt", 32)}


def chunks(text: str):
    """Runs of whole words, each as long as fits SEQ - 1 bytes, one after another."""
    words = text.split()
    run = []
    for w in words:
        if len(" ".join(run + [w]).encode()) > SEQ - 1:
            if len(run) >= 4:
                yield run
            run = []
        run.append(w)


def spoil_word_order(words, rng: random.Random):
    while True:
        i, j = sorted(rng.sample(range(len(words)), 2))
        if words[i] != words[j]:
            words[i], words[j] = words[j], words[i]
            return


def spoil_spelling(words, rng: random.Random):
    while True:
        k = rng.randrange(len(words))
        w = words[k]
        if len(w) >= 3:
            i = rng.randrange(len(w) - 1)
            if w[i] != w[i + 1] and w[i].isalpha() and w[i + 1].isalpha():
                words[k] = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
                return


TASKS = {"word_order": spoil_word_order, "spelling": spoil_spelling}


def example(words, spoil, rng: random.Random):
    words = list(words)
    if spoil is not None:
        spoil(words, rng)
    ids = [CLS] + [FIRST_BYTE + b for b in " ".join(words).encode()]
    mask = [1] * len(ids) + [0] * (SEQ - len(ids))
    return ids + [PAD] * (SEQ - len(ids)), mask, 0 if spoil is not None else 1


def write(path: pathlib.Path, tensors):
    header, blobs, offset = {}, [], 0
    for name, shape, values in tensors:
        blob = struct.pack(f"<{len(values)}q", *values)
        header[name] = {"dtype": "I64", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    out = DATA / "acceptability"
    out.mkdir(exist_ok=True)
    for task, spoil in TASKS.items():
        for name, (source, steps) in SETS.items():
            text = (DATA / "moby_dick" / source).read_text(encoding="utf-8")
            rng = random.Random(f"{task}-{name}")
            runs = list(chunks(text))
            rng.shuffle(runs)
            need = steps * BATCH
            if len(runs) < need:
                raise SystemExit(f"{source} gives {len(runs)} examples, fewer than {need}")
            ids, masks, labels = [], [], []
            for words in runs[:need]:
                i, m, label = example(words, spoil if rng.random() < 0.5 else None, rng)
                ids += i
                masks += m
                labels.append(label)
            path = out / f"{task}_{name}.safetensors"
            write(
                path,
                [
                    ("input_ids", [steps, BATCH, SEQ], ids),
                    ("attention_mask", [steps, BATCH, SEQ], masks),
                    ("labels", [steps, BATCH], labels),
                ],
            )
            print(f"wrote {path}: {need} examples, {sum(labels)} as written")


if __name__ == "__main__":
    main()
