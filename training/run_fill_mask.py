"""Print the top-k fillers of <mask> in product titles, from an exported model.

    python training/run_fill_mask.py --model-dir runs/demo/model "Organic cotton baby <mask>" --top-k 5
    cat titles.txt | python training/run_fill_mask.py --model-dir runs/demo/model -
    python training/run_fill_mask.py --checkpoint runs/demo/job/checkpoints/last.ckpt "Baby <mask> bottle"
"""
import argparse
import os
import sys
import tempfile


try:  # common first: it checks that the packages Python imports are this checkout's
    import common
except ImportError:
    sys.exit("error: this project is not installed; run `pip install -e .` in its checkout (docs/troubleshooting.md)")
common.check_own_checkout(__file__)

from common import ArgumentParser, UsageError, run_main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="texts with one <mask> each; '-' reads one text per line from stdin")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="exported model directory (JOB/model)")
    source.add_argument("--checkpoint", help="a training checkpoint (.ckpt) instead of an exported model")
    p.add_argument("--path-to-tokenizer", help="with --checkpoint: step 2's directory (default: the run's own)")
    p.add_argument("--input-file", help="read texts from this file, one per line")
    p.add_argument("--top-k", type=int, default=5, help="predictions per text (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.checkpoint:
        from training.export_model import export_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            export_checkpoint(args.checkpoint, os.path.join(tmp, "model"), args.path_to_tokenizer)
            args.model_dir = os.path.join(tmp, "model")
            return predict(args)
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        raise UsageError(f"{args.model_dir!r} is not an exported model (no config.json); pass JOB/model")
    predict(args)


def predict(args: argparse.Namespace) -> None:
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    texts = [t for t in args.texts if t != "-"]
    if "-" in args.texts:
        texts += [line.strip() for line in sys.stdin if line.strip()]
    if args.input_file:
        with open(args.input_file, encoding="utf-8") as f:
            texts += [line.strip() for line in f if line.strip()]
    if not texts:
        raise UsageError("no text given; pass texts with <mask>, '-' for stdin, or --input-file")
    from training.fill_mask import fill_mask, load_fill_mask  # here: --help and a bad flag answer without torch

    fill = load_fill_mask(args.model_dir)
    mask = fill.tokenizer.mask_token
    for text in texts:
        if text.count(mask) != 1:
            raise UsageError(f"{text!r} must contain {mask} exactly once")
        print(text)
        print(f"  {'rank':>4}  {'score':>7}  {'token':<16} filled")
        for rank, p in enumerate(fill_mask(fill, text, args.top_k), 1):
            print(f"  {rank:>4}  {p['score']:7.4f}  {p['token']!r:<16} {p['sequence']}")


if __name__ == "__main__":
    sys.exit(run_main(main))
