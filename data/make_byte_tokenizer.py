"""Writes data/bytes/tokenizer.json: a Hugging Face tokenizer whose tokens are the 256 bytes
(byte-level BPE without merges, GPT-2's byte-to-character table), so that any UTF-8 text is
tokenized without a vocabulary trained on it. For training examples on the texts that ship
with lmc; the `tokenizers` library and transformers read it. Python's standard library only.

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


def main():
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
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
    out = pathlib.Path(__file__).resolve().parent / "bytes" / "tokenizer.json"
    out.write_text(json.dumps(tokenizer, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(vocab)} tokens)")


if __name__ == "__main__":
    main()
