"""Step 2: fit a ByteLevel BPE tokenizer (RoBERTa special tokens) on the training split.

    python tokenizer/run_tokenizer_fitting.py --corpus-dir data/corpus/train --output-dir data/tokenizer

The BPE trainer holds every distinct word of its input in memory. When the whole corpus would need more
than --memory-budget, the fit uses a uniform random sample of lines (from every shard) that fits.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import TYPE_CHECKING


try:  # common first: it checks that the packages Python imports are this checkout's
    import common
except ImportError:
    sys.exit("error: this project is not installed; run `pip install -e .` in its checkout (docs/troubleshooting.md)")
common.check_own_checkout(__file__)

from common import ArgumentParser, UsageError, run_main
from tokenizer.memory import available_memory, default_memory_budget, format_bytes, parse_memory_budget

if TYPE_CHECKING:
    from tokenizer.fitting import FitPlan

REPORT = "tokenizer_report.json"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", default="data/corpus/train",
                   help="training split of step 1 (a directory of .txt shards, or one .txt file) (default: %(default)s)")
    p.add_argument("--validation-dir",
                   help="held-out text for the report (default: the 'validation' directory beside --corpus-dir, if any)")
    p.add_argument("--output-dir", default="data/tokenizer", help="where to save the tokenizer (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=30_000, help="target vocabulary size (default: %(default)s)")
    p.add_argument("--min-frequency", type=int, default=2,
                   help="minimum count for a merge to be learned (default: %(default)s)")
    p.add_argument("--lowercase", action="store_true", help="lowercase text before tokenising")
    p.add_argument("--memory-budget",
                   help="most memory the fit may take, e.g. 4GiB, 512MiB, 2G (binary), 2GB (decimal) or a number "
                        "of MiB; a corpus that would need more is fitted on a uniform random sample of its lines "
                        "that fits (default: half of this machine's memory, or of the job's or container's memory "
                        f"limit if less; here {format_bytes(default_memory_budget())}; pass it "
                        "explicitly for the same sample on any machine)")
    p.add_argument("--max-lines", type=int, default=0,
                   help="fit on at most this many lines, a uniform random sample of the whole corpus; "
                        "0 = no cap (default)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the line sample, so that a rerun fits the same tokenizer (default: %(default)s)")
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
    from tokenizer.fitting import corpus_files

    lines: list[str] = []
    for f in corpus_files(validation_dir):
        with open(f, encoding="utf-8") as fh:
            lines.extend(line.rstrip("\n") for line in fh)
        if len(lines) >= limit:
            break
    return lines[:limit]


def describe(plan: "FitPlan", budget: int) -> str:
    """One line: what the fit uses out of the corpus, and why."""
    if not plan.sampled:
        return (f"fitting on all {plan.corpus_lines:,} lines ({format_bytes(plan.corpus_bytes)}): "
                f"~{format_bytes(plan.estimate)} estimated, within --memory-budget {format_bytes(budget)}")
    share = plan.lines / plan.corpus_lines
    return (f"fitting on {plan.lines:,} of {plan.corpus_lines:,} lines ({share:.1%}, "
            f"~{format_bytes(share * plan.corpus_bytes)} of {format_bytes(plan.corpus_bytes)}): {plan.reason}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Imported once the command line is parsed, so that --help and a bad flag answer at once.
    from tokenizer.fitting import (LineSample, check_settings, corpus_files, estimate_fit_memory, fit_tokenizer,
                                   plan_fit, save_tokenizer)
    from tokenizer.report import tokenizer_report

    out = args.output_dir
    if os.path.exists(os.path.join(out, "tokenizer.json")) and not args.overwrite:
        raise UsageError(f"{out!r} already holds a tokenizer; pass --overwrite to replace it or choose another --output-dir")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--output-dir {out!r} is a file; choose a directory path")
    budget = default_memory_budget() if args.memory_budget is None else parse_memory_budget(args.memory_budget)
    check_settings(args.vocab_size, args.min_frequency)  # before the log line: a refusal is one line
    files = corpus_files(args.corpus_dir)
    plan = plan_fit(files, budget, args.max_lines)
    print(describe(plan, budget), file=sys.stderr)
    needed = estimate_fit_memory(plan.lines / plan.corpus_lines * plan.corpus_bytes)
    available = available_memory()
    if available is not None and available < needed:
        print(f"warning: only {format_bytes(available)} of memory is free now, less than the ~{format_bytes(needed)} "
              "this fit may take; close other programs or pass a smaller --memory-budget", file=sys.stderr)
    sample = LineSample(files, plan.lines, plan.corpus_lines, args.seed) if plan.sampled else None
    started = time.time()
    tokenizer = fit_tokenizer(files, args.vocab_size, args.min_frequency, args.lowercase, sample,
                              show_progress=not args.no_progress)
    fit_seconds = time.time() - started
    report = tokenizer_report(tokenizer, _validation_lines(args.corpus_dir, args.validation_dir))
    report.update({"fit_seconds": round(fit_seconds, 3), "corpus_files": len(files), "lowercase": args.lowercase,
                   "requested_vocab_size": args.vocab_size, "min_frequency": args.min_frequency,
                   "corpus_lines": plan.corpus_lines, "corpus_bytes": plan.corpus_bytes,
                   "fitted_lines": sample.lines if sample else plan.corpus_lines,
                   "fitted_bytes": sample.bytes if sample else plan.corpus_bytes,
                   "sampled": plan.sampled, "sample_reason": plan.reason, "sample_seed": args.seed,
                   "memory_budget_bytes": budget, "estimated_full_fit_bytes": plan.estimate})
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
