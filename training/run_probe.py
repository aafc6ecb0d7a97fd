"""Does pretraining pay downstream, and where labels are few? A label-budget curve of the model as a classifier.

    python training/run_probe.py --model-dir runs/demo/job/model
    python training/run_probe.py --model-dir JOB/model --data-files reviews.tsv.gz \\
        --text-column review_body --label-column star_rating --budgets 8 32 all

With k labelled examples per class (--budgets; several draws, --seeds, where k is a number), fine-tunes the
pretrained encoder (mean of its token states, a linear head) and the same architecture from random
initialisation, and fits TF-IDF (word 1-2 grams, character 2-5 grams) + logistic regression, on the same
examples. Each method chooses its settings (learning rate and epochs, or C) on a dev split carved from those
examples, the same grid for both encoders, and is scored once on the same held-out test split: accuracy and
macro-F1 in OUTPUT/probe_metrics.json, as a table here and in the model card. Needs scikit-learn:
pip install -e '.[probe]'.
"""
import argparse
import os
import sys


try:  # common first: it checks that the packages Python imports are this checkout's
    import common
except ImportError:
    sys.exit("error: this project is not installed; run `pip install -e .` in its checkout (docs/troubleshooting.md)")
common.check_own_checkout(__file__)

from common import ArgumentParser, UsageError, run_main, write_json_atomic
from corpus.run_corpus_generation import SAMPLE_FILE

CARD_HEADING = "## Downstream probe"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="exported model directory (JOB/model)")
    p.add_argument("--data-files", nargs="+", metavar="PATH",
                   help="labelled table(s), same formats as step 1 (default: the bundled sample)")
    p.add_argument("--text-column", default="product_title", help="input text column (default: %(default)s)")
    p.add_argument("--label-column", default="product_category", help="label column (default: %(default)s)")
    p.add_argument("--output-dir", help="where probe_metrics.json goes (default: --model-dir)")
    p.add_argument("--test-size", type=float, default=0.1,
                   help="held-out share by stable hash; with step 1's --seed and --validation-sample-size the "
                        "held-out texts are the ones pretraining never saw (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="split hash salt and training seed (default: %(default)s)")
    p.add_argument("--min-examples", type=int, default=20,
                   help="labels with fewer training examples are reported and dropped (default: %(default)s)")
    p.add_argument("--budgets", nargs="+", type=budget, default=[8, 32, 128, None], metavar="K",
                   help="labelled examples per class drawn from the training split for each point of the curve: "
                        "numbers of 2 or more, and 'all' (default: 8 32 128 all)")
    p.add_argument("--seeds", type=int, default=3,
                   help="draws of the k examples (and training seeds) per numeric budget, for a mean and a "
                        "spread; 'all' runs once (default: %(default)s)")
    p.add_argument("--dev-share", type=float, default=0.2,
                   help="share of each class of the drawn examples held out to choose the learning rate, epochs "
                        "and C; never the test split (default: %(default)s)")
    p.add_argument("--lr", type=float, nargs="+", default=[2e-4, 1e-3], metavar="LR",
                   help="fine-tuning learning rates tried, the same for both encoders (default: 2e-4 1e-3)")
    p.add_argument("--epochs", type=int, default=3,
                   help="fine-tuning epochs per learning rate; the best epoch on dev is kept (default: %(default)s)")
    p.add_argument("--min-steps", type=int, default=60,
                   help="train longer than --epochs when it gives fewer optimizer steps, as a few labels per "
                        "class do (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch size (default: %(default)s)")
    return p


def budget(value: str) -> int | None:
    """A --budgets value: k examples per class, or None for 'all'."""
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 2:  # one to fit and one for the dev split
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of 2 or more, nor 'all'")
    return int(value)


def cell(summary: dict) -> str:
    spread = lambda key: f" ± {summary[key + '_std']:.3f}" if summary["seeds"] > 1 else ""
    return (f"{summary['accuracy']:.3f}{spread('accuracy')} / {summary['macro_f1']:.3f}{spread('macro_f1')}")


def curve_table(metrics: dict) -> str:
    """The curve as a Markdown table: a row per budget, accuracy / macro-F1 per method."""
    from training.probe import METHODS

    lines = ["| labels per class | labelled examples | " + " | ".join(METHODS.values()) + " |",
             "|---" * (2 + len(METHODS)) + "|"]
    for k, row in metrics["curve"].items():
        first = row["pretrained"]
        examples = first["runs"][0]["fit_examples"] + first["runs"][0]["dev_examples"]
        seeds = f" ({first['seeds']} seeds)" if first["seeds"] > 1 else ""
        lines.append(f"| {k}{seeds} | {examples} | " + " | ".join(cell(row[m]) for m in METHODS) + " |")
    return "\n".join(lines)


def cite_in_model_card(model_dir: str, metrics: dict) -> None:
    """Replace the probe section of the model card (README.md) with these results."""
    path = os.path.join(model_dir, "README.md")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        card = f.read().split(f"\n{CARD_HEADING}\n")[0].rstrip("\n")
    recipe = metrics["recipe"]
    card += (f"\n\n{CARD_HEADING}\n\n{caption(metrics)}\n\n{curve_table(metrics)}\n\n"
             f"Encoders: mean of the token states and a linear head, learning rate ({', '.join(map(str, recipe['lrs']))}) "
             f"and epochs (up to {recipe['max_epochs']}) chosen on the dev examples; TF-IDF (word 1-2 grams, "
             f"character 2-5 grams) + logistic regression: C chosen on the same. Majority class accuracy: "
             f"{metrics['majority_class_accuracy']}. Details: probe_metrics.json\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(card)


def caption(metrics: dict) -> str:
    return (f"Accuracy / macro-F1 on the same {metrics['test_examples']} held-out examples ({metrics['labels']} labels), "
            f"mean ± standard deviation over seeds. Labelled examples: drawn from {metrics['train_examples']} "
            f"training examples, {metrics['recipe']['dev_share']} of them set aside to choose the settings.")


def dropped_summary(dropped: dict[str, int], min_examples: int) -> str:
    """One short line however long the tail of rare labels: counts here, the labels in probe_metrics.json."""
    return (f"dropped {len(dropped)} label(s) with fewer than {min_examples} training examples "
            f"({sum(dropped.values())} rows); they are listed in probe_metrics.json")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        raise UsageError(f"{args.model_dir!r} is not an exported model (no config.json); pass JOB/model")
    if (not 0 < args.test_size < 1 or not 0 < args.dev_share < 1 or min(args.epochs, args.batch_size, args.seeds) < 1
            or args.min_examples < 2 or args.min_steps < 0 or min(args.lr) <= 0):
        raise UsageError("--test-size and --dev-share must be in (0, 1); --epochs, --batch-size, --seeds at least 1; "
                         "--min-examples at least 2; --min-steps 0 or more; --lr positive")
    budgets = sorted(set(args.budgets), key=lambda k: float("inf") if k is None else k)
    from training.baseline import require_sklearn

    require_sklearn()
    # Imported once the flags are checked: --help and a bad flag answer without torch.
    from corpus.sources import expand_data_files
    from training.probe import load_labelled, run_probe

    files = expand_data_files(args.data_files or [SAMPLE_FILE])
    data = load_labelled(files, args.text_column, args.label_column, args.test_size, args.seed, args.min_examples)
    if data["dropped_labels"]:
        print(dropped_summary(data["dropped_labels"], args.min_examples), file=sys.stderr)
    metrics = run_probe(args.model_dir, data, budgets, args.seeds, args.lr, args.epochs, args.min_steps,
                        args.batch_size, args.dev_share, args.seed)
    out = args.output_dir or args.model_dir
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "probe_metrics.json"), metrics)
    if os.path.abspath(out) == os.path.abspath(args.model_dir):
        cite_in_model_card(args.model_dir, metrics)
    print(f"{caption(metrics)}\n\n{curve_table(metrics)}\n\nmajority class accuracy: "
          f"{metrics['majority_class_accuracy']}; details: {os.path.join(out, 'probe_metrics.json')}")


if __name__ == "__main__":
    sys.exit(run_main(main))
