"""Score a masked LM on a split with the fixed masks of training's validation, and print JSON.

    python training/run_evaluation.py --model-dir runs/titles/model --path-to-val-set data/corpus/validation
    python training/run_evaluation.py --checkpoint runs/titles/checkpoints/last.ckpt --max-val-sentences 0

With training's defaults (--max-val-sentences, --seed, --mlm-probability, --max-seq-length) and the same
precision, it reproduces the run's val_loss on its export; --max-val-sentences 0 scores the whole split.
"""
import argparse
import json
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
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="an exported JOB/model, or a local Hugging Face RoBERTa-style masked LM")
    source.add_argument("--checkpoint", help="a training checkpoint (.ckpt)")
    p.add_argument("--path-to-tokenizer", help="step 2's directory (default: the model's own, or the checkpoint run's)")
    p.add_argument("--path-to-val-set", default="data/corpus/validation",
                   help="the split to score: a directory of .txt shards, a file or a glob (default: %(default)s)")
    p.add_argument("--max-val-sentences", type=int, default=10_000,
                   help="score this many sentences, chosen by --seed as training does; 0 = all (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="training's --seed: picks the sample and masks (default: %(default)s)")
    p.add_argument("--mlm-probability", type=float, default=0.15, help="share of tokens masked for scoring; training validates at 0.15 whatever its own "
                        "--mlm-probability, so keep 0.15 to compare with it (default: %(default)s)")
    p.add_argument("--max-seq-length", type=int, default=128, help="training's sequence length (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="sequences per forward pass; the result does not depend on it (default: %(default)s)")
    p.add_argument("--precision", default="auto", help="as training's --precision (default: %(default)s)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: %(default)s)")
    p.add_argument("--cache-dir", help="token cache to reuse, e.g. JOB/cache (default: a temporary one)")
    p.add_argument("--output", metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--no-progress", action="store_true", help="hide the tokenising progress bar")
    return p


def load_model(args: argparse.Namespace):
    """(model, tokenizer, tokenizer.json path) from --model-dir or --checkpoint."""
    from training.export_model import load_checkpoint_with_tokenizer
    from training.job import load_pretrained, load_tokenizer

    if args.checkpoint:
        module, tokenizer, tokenizer_file = load_checkpoint_with_tokenizer(args.checkpoint, args.path_to_tokenizer)
        return module.model, tokenizer, tokenizer_file
    tokenizer, tokenizer_file = load_tokenizer(args.path_to_tokenizer or args.model_dir)
    return load_pretrained(args.model_dir, tokenizer), tokenizer, tokenizer_file


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    checks = [(args.max_val_sentences >= 0, "--max-val-sentences must be 0 (all) or more"),
              (args.batch_size >= 1, "--batch-size must be at least 1"),
              (0 < args.mlm_probability < 1, "--mlm-probability must be in (0, 1)"),
              (8 <= args.max_seq_length <= 512, "--max-seq-length must be between 8 and 512")]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    # Imported once the flags are checked: torch, Lightning and transformers take 10-15 s on 2 cores.
    from training.devices import device_type, plan_for_device
    from training.evaluation import evaluate, validation_sample

    model, tokenizer, tokenizer_file = load_model(args)
    plan = plan_for_device(device_type(args.accelerator), args.precision)
    model.set_attn_implementation(plan.attention)
    with tempfile.TemporaryDirectory() as tmp:
        sample = validation_sample(args.path_to_val_set, tokenizer, tokenizer_file, args.cache_dir or tmp,
                                   args.max_seq_length, args.mlm_probability, args.seed, args.max_val_sentences,
                                   progress=not args.no_progress)
        metrics = evaluate(model, sample, tokenizer.pad_token_id, args.batch_size, plan.precision, plan.device)
    metrics |= {"precision": plan.precision, "model": os.path.abspath(args.model_dir or args.checkpoint)}
    text = json.dumps(metrics)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(run_main(main))
