"""Step 2: fit a ByteLevel BPE tokenizer (RoBERTa special tokens) on the training split.

    python tokenizer/run_tokenizer_fitting.py --corpus-dir data/corpus/train --output-dir data/tokenizer
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from common import UsageError, run_main
from tokenizer.fitting import corpus_files, fit_tokenizer, save_tokenizer
from tokenizer.report import tokenizer_report

REPORT = "tokenizer_report.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", default="data/corpus/train",
                   help="training split of step 1 (a directory of .txt shards, or one .txt file) (default: %(default)s)")
    p.add_argument("--validation-dir",
                   help="held-out text for the report (default: the 'validation' directory beside --corpus-dir, if any)")
    p.add_argument("--output-dir", default="data/tokenizer", help="where to save the tokenizer (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=30_000, help="target vocabulary size (default: %(default)s)")
    p.add_argument("--min-frequency", type=int, default=2,
                   help="minimum count for a merge to be learned (default: %(default)s)")
    p.add_argument("--lowercase", action="store_true", help="lowercase text before tokenising")
    p.add_argument("--max-lines", type=int, default=0,
                   help="fit on at most this many lines, spread evenly over the corpus, to bound the trainer's "
                        "memory on very large corpora; 0 = all lines (default)")
    p.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --output-dir")
    p.add_argument("--no-progress", action="store_true", help="do not show the trainer's progress bars")
    return p


def _validation_lines(train_corpus: str, validation_dir: str | None, limit: int = 20_000) -> list[str]:
    """Up to `limit` held-out lines: enough for stable statistics, cheap next to the fit itself."""
    if validation_dir is None:
        guess = os.path.join(os.path.dirname(os.path.abspath(train_corpus.rstrip("/"))), "validation")
        if not os.path.isdir(guess):
            return []
        validation_dir = guess
    lines: list[str] = []
    for f in corpus_files(validation_dir):
        with open(f, encoding="utf-8") as fh:
            lines.extend(line.rstrip("\n") for line in fh)
        if len(lines) >= limit:
            break
    return lines[:limit]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = args.output_dir
    if os.path.exists(os.path.join(out, "tokenizer.json")) and not args.overwrite:
        raise UsageError(f"{out!r} already holds a tokenizer; pass --overwrite to replace it or choose another --output-dir")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--output-dir {out!r} is a file; choose a directory path")
    files = corpus_files(args.corpus_dir)
    started = time.time()
    tokenizer = fit_tokenizer(files, args.vocab_size, args.min_frequency, args.lowercase, args.max_lines,
                              show_progress=not args.no_progress)
    fit_seconds = time.time() - started
    report = tokenizer_report(tokenizer, _validation_lines(args.corpus_dir, args.validation_dir))
    report.update({"fit_seconds": round(fit_seconds, 3), "corpus_files": len(files), "lowercase": args.lowercase,
                   "requested_vocab_size": args.vocab_size, "min_frequency": args.min_frequency})
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tokenizer-", dir=out)
    try:  # write everything aside, then move it in: a failure never leaves a half-saved tokenizer
        save_tokenizer(tokenizer, staging)
        with open(os.path.join(staging, REPORT), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(out, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(json.dumps(report, ensure_ascii=False))
    print(f"tokenizer saved to {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
