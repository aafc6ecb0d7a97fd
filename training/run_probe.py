"""Does the pretrained model help downstream? Fine-tune it as a classifier and compare with random weights.

    python training/run_probe.py --model-dir runs/demo/job/model
    python training/run_probe.py --model-dir JOB/model --data-files reviews.tsv.gz \\
        --text-column review_body --label-column star_rating

Trains a small classification head (AutoModelForSequenceClassification) on the pretrained encoder and,
with the same budget and seed, the same architecture from random initialisation; reports accuracy and
macro-F1 of both on a held-out split in OUTPUT/probe_metrics.json and in the model card.
"""
import argparse
import json
import os
import sys
from importlib.util import find_spec


def check_own_checkout() -> None:
    """Stop in one line when Python would import this project's packages from somewhere else than the checkout
    this script is in (an editable install of another clone, a stray PYTHONPATH): that code, not the code beside
    the script, would run. Here, not in common.py, since common itself may be the other checkout's; no sys.path
    edits (the style guide), so the fix is the user's: docs/troubleshooting.md."""
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    for name in ("common", "corpus", "tokenizer", "training"):
        spec = find_spec(name)
        where = os.path.realpath(spec.origin) if spec and spec.origin else None
        home = where and os.path.dirname(where if name == "common" else os.path.dirname(where))
        if home != here:
            sys.exit(f"error: this script is in {here} but Python imports {name!r} from {where or 'nowhere'}; "
                     f"run `pip install -e {here}` to use this checkout"
                     + (f", or run the script in {home}" if home else "") + " (see docs/troubleshooting.md)")


check_own_checkout()

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
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs for each model (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-4, help="fine-tuning learning rate (default: %(default)s)")
    return p


def cite_in_model_card(model_dir: str, metrics: dict) -> None:
    """Replace the probe section of the model card (README.md) with these results."""
    path = os.path.join(model_dir, "README.md")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        card = f.read().split(f"\n{CARD_HEADING}\n")[0].rstrip("\n")
    p, r = metrics["pretrained"], metrics["random_init"]
    card += (f"\n\n{CARD_HEADING}\n\n{metrics['labels']} labels, {metrics['train_examples']} training and "
             f"{metrics['test_examples']} held-out examples, {metrics['epochs']} epochs each:\n\n"
             f"| encoder | accuracy | macro-F1 | test loss |\n|---|---|---|---|\n"
             f"| this model | {p['accuracy']} | {p['macro_f1']} | {p['loss']} |\n"
             f"| random initialisation | {r['accuracy']} | {r['macro_f1']} | {r['loss']} |\n\n"
             f"Majority class accuracy: {metrics['majority_class_accuracy']}. Details: probe_metrics.json\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(card)


def dropped_summary(dropped: dict[str, int], min_examples: int) -> str:
    """One short line however long the tail of rare labels: counts here, the labels in probe_metrics.json."""
    return (f"dropped {len(dropped)} label(s) with fewer than {min_examples} training examples "
            f"({sum(dropped.values())} rows); they are listed in probe_metrics.json")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        raise UsageError(f"{args.model_dir!r} is not an exported model (no config.json); pass JOB/model")
    if not 0 < args.test_size < 1 or min(args.epochs, args.batch_size, args.min_examples) < 1 or args.lr <= 0:
        raise UsageError("--test-size must be in (0, 1); --epochs, --batch-size, --min-examples at least 1; --lr positive")
    # Imported once the flags are checked: --help and a bad flag answer without torch.
    from corpus.sources import expand_data_files
    from training.probe import load_labelled, run_probe

    files = expand_data_files(args.data_files or [SAMPLE_FILE])
    data = load_labelled(files, args.text_column, args.label_column, args.test_size, args.seed, args.min_examples)
    if data["dropped_labels"]:
        print(dropped_summary(data["dropped_labels"], args.min_examples), file=sys.stderr)
    metrics = run_probe(args.model_dir, data, args.epochs, args.batch_size, args.lr, args.seed)
    out = args.output_dir or args.model_dir
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "probe_metrics.json"), metrics)
    if os.path.abspath(out) == os.path.abspath(args.model_dir):
        cite_in_model_card(args.model_dir, metrics)
    print(json.dumps({k: metrics[k] for k in ("pretrained", "random_init", "labels", "majority_class_accuracy")}))


if __name__ == "__main__":
    sys.exit(run_main(main))
