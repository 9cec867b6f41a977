"""A/B-test two position schemes of BERT with lmc and plot throughput against length with
matplotlib: the learned table against ALiBi (a one-line variant in models/bert.model), on a
small BERT with seeded random weights.

    python python/examples/ab_positions.py [out.png]
"""

import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

import lmc  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
BERT = str(REPO / "models" / "bert.model")


def main() -> None:
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "out/ab_positions.png")
    records = lmc.ab(
        f"{BERT}:BertModel",
        f"{BERT}:BertALiBi",
        random_weights=True,
        set={"hidden_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 512},
        lengths=[32, 64, 128],
        runs=5,
        warmup=1,
    )
    try:
        table = records.dataframe()[["label", "length", "median_ms", "tokens_per_s", "ratio_vs_base", "ratio_low", "ratio_high"]]
        print(table.to_string(index=False))
    except ImportError:
        for r in records:
            print(r["label"], r["length"], r["median_ms"], r["tokens_per_s"])

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["label"] for r in records):
        rows = [r for r in records if r["label"] == label]
        ax.plot([r["length"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o", label=label)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("tokens per second")
    ax.set_title("BERT position schemes (lmc ab, random weights)")
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
