"""Print the top-k fillers of <mask> in product titles, from an exported model.

    python training/run_fill_mask.py --model-dir runs/demo/model "Organic cotton baby <mask>" --top-k 5
    cat titles.txt | python training/run_fill_mask.py --model-dir runs/demo/model -
    python training/run_fill_mask.py --checkpoint runs/demo/job/checkpoints/last.ckpt "Baby <mask> bottle"
"""
import argparse
import os
import sys
import tempfile
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
