"""Writes data/bytes/tokenizer.json: a Hugging Face tokenizer whose tokens are the 256 bytes
(byte-level BPE without merges, GPT-2's byte-to-character table), so that any UTF-8 text is
tokenized without a vocabulary trained on it. For training examples on the texts that ship
with lmc; the `tokenizers` library and transformers read it. Python's standard library only.

Also data/bytes_t5/tokenizer.json, the same bytes laid out for T5's span corruption: <pad> 0,
</s> 1 and <unk> 2 first (ByT5's layout), the bytes from 3, and 100 sentinels after them in
T5's order (<extra_id_0> is the last id, 358; <extra_id_99> is 259).

And data/bytes_bert/tokenizer.json, the bytes laid out for BERT-style models (masked LM,
ELECTRA): [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, and the bytes from 5 (261 tokens).

    python3 data/make_byte_tokenizer.py
"""
import json
import pathlib


def bytes_to_unicode():
    # GPT-2's table: printable bytes stand for themselves, the others are moved past 255.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def special(content, id):
    return {"id": id, "content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}


def tokenizer_json(vocab, added):
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(content, id) for content, id in added],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def write(name, tokenizer):
    out = pathlib.Path(__file__).resolve().parent / name / "tokenizer.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(tokenizer, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(tokenizer['model']['vocab'])} tokens)")


def main():
    table = bytes_to_unicode()
    write("bytes", tokenizer_json({table[b]: b for b in range(256)}, []))

    added = [("<pad>", 0), ("</s>", 1), ("<unk>", 2)] + [(f"<extra_id_{k}>", 358 - k) for k in range(100)]
    vocab = {table[b]: 3 + b for b in range(256)}
    vocab.update(dict(added))
    write("bytes_t5", tokenizer_json(dict(sorted(vocab.items(), key=lambda kv: kv[1])), sorted(added, key=lambda a: a[1])))

    added = [("[PAD]", 0), ("[UNK]", 1), ("[CLS]", 2), ("[SEP]", 3), ("[MASK]", 4)]
    vocab = dict(added)
    vocab.update({table[b]: 5 + b for b in range(256)})
    write("bytes_bert", tokenizer_json(vocab, added))


if __name__ == "__main__":
    main()
