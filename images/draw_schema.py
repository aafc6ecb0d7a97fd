"""Draw images/schema.png: the three steps and what each one writes. Run: python images/draw_schema.py"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

STEPS = [
    ("reviews", "Amazon review TSVs\nhub datasets\ncsv / json / parquet / txt", "#f2f2f2"),
    ("1  corpus/\nrun_corpus_generation.py", "normalise, dedup,\nhash split, shards", "#dbe9f6"),
    ("2  tokenizer/\nrun_tokenizer_fitting.py", "ByteLevel BPE\n<s> <pad> </s> <unk> <mask>", "#e2f0d9"),
    ("3  training/\nrun_training.py", "RoBERTa masked LM\nPyTorch Lightning", "#fde9d9"),
]
ARTIFACTS = [
    None,
    "train/*.txt\nvalidation/*.txt\nmanifest.json",
    "tokenizer.json\ntokenizer_report.json",
    "checkpoints/last.ckpt\ntensorboard/\nmodel/ (fill-mask)\nfinal_metrics.json",
]


def draw(path: str) -> None:
    fig, ax = plt.subplots(figsize=(12, 4.2), dpi=120)
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 4.2)
    ax.axis("off")
    for i, ((title, body, colour), artifact) in enumerate(zip(STEPS, ARTIFACTS)):
        x = 0.3 + i * 3
        ax.add_patch(FancyBboxPatch((x, 2.2), 2.4, 1.7, boxstyle="round,pad=0.05", fc=colour, ec="#555555"))
        ax.text(x + 1.2, 3.45, title, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x + 1.2, 2.65, body, ha="center", va="center", fontsize=8)
        if artifact:
            ax.add_patch(FancyBboxPatch((x + 0.2, 0.25), 2.0, 1.45, boxstyle="round,pad=0.05", fc="white",
                                        ec="#999999", ls="--"))
            ax.text(x + 1.2, 0.97, artifact, ha="center", va="center", fontsize=8.5, family="monospace")
            ax.annotate("", xy=(x + 1.2, 1.75), xytext=(x + 1.2, 2.15), arrowprops=dict(arrowstyle="->"))
        if i < len(STEPS) - 1:
            ax.annotate("", xy=(x + 2.95, 3.05), xytext=(x + 2.45, 3.05), arrowprops=dict(arrowstyle="->", lw=1.5))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    draw(os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.png"))
