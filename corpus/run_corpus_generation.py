"""Step 1: turn product reviews into a deduplicated, split, sharded one-sentence-per-line corpus.

With no --data-files and no --dataset, the bundled synthetic sample is used.

    python corpus/run_corpus_generation.py --output-dir data/corpus
    python corpus/run_corpus_generation.py --data-files 'meta_*.jsonl.gz' --output-dir data/titles
    python corpus/run_corpus_generation.py --data-files \\
        'hf://datasets/McAuley-Lab/Amazon-Reviews-2023/raw/review_categories/All_Beauty.jsonl' \\
        --text-column text --output-dir data/reviews
    python corpus/run_corpus_generation.py --data-files 'reviews/*.tsv.gz' --output-dir data/corpus
"""
import argparse
import json
import os
import sys
from typing import TYPE_CHECKING


try:  # common first: it checks that the packages Python imports are this checkout's
    import common
except ImportError:
    sys.exit("error: this project is not installed; run `pip install -e .` in its checkout (docs/troubleshooting.md)")
common.check_own_checkout(__file__)

from common import ArgumentParser, run_main

if TYPE_CHECKING:
    from corpus.pipeline import CorpusConfig

SAMPLE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample", "amazon_reviews_us_sample.tsv.gz")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input (one of; default: the bundled synthetic sample)")
    src.add_argument("--data-files", nargs="+", metavar="PATH",
                     help="files or globs, local or remote (https://... URLs; hf://datasets/OWNER/NAME/PATH hub "
                          "paths, globs too), read in one streaming pass: JSON Lines .jsonl/.json (Amazon Reviews "
                          "2023 and 2018, one object per line; a .json array also works), Amazon review TSVs, .csv, "
                          ".parquet or .txt (one type per run; .txt gives a column named 'text', one row per line); "
                          ".gz for jsonl, json, tsv and txt"),
    src.add_argument("--dataset", metavar="NAME",
                     help="Hugging Face hub dataset name, loaded with `datasets` (one without a loading script; for "
                          "Amazon Reviews 2023 pass its files with --data-files hf://...)")
    src.add_argument("--dataset-type", metavar="CONFIG", help="configuration (subset) of --dataset")
    p.add_argument("--text-column", metavar="COL[,COL...]",
                   help="column(s) holding the text: strings or lists of strings (a list's items are joined with "
                        "a space, see --line-per); several are joined with a space; a dotted path (details.Brand) "
                        "reads a nested JSON key (default: product_title, else title, else text; in an Amazon "
                        "Reviews 2023 review file `title` is the review's headline, `text` the review)")
    p.add_argument("--line-per", choices=("row", "value"), default="row",
                   help="row: one line per row, its columns and list items joined with a space; value: every "
                        "string and every list item on a line of its own, e.g. one line per feature bullet "
                        "(default: %(default)s)")
    p.add_argument("--cache-dir", help="where `datasets` caches downloads and Arrow files (default: its own)")
    p.add_argument("--output-dir", default="data/corpus", help="where to write the corpus (default: %(default)s)")
    p.add_argument("--validation-sample-size", type=float, default=0.1,
                   help="share of unique sentences put in validation, in (0, 1) (default: %(default)s)")
    p.add_argument("--lines-per-shard", type=int, default=10_000, help="lines per .txt shard (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="salt of the split hash (default: %(default)s)")
    p.add_argument("--lowercase", action="store_true", help="lowercase every sentence")
    p.add_argument("--strip-punctuation", action="store_true", help="replace punctuation by spaces")
    p.add_argument("--min-chars", type=int, default=1, help="drop sentences shorter than this (default: %(default)s)")
    p.add_argument("--max-chars", type=int, default=0, help="drop sentences longer than this; 0 = no limit (default)")
    p.add_argument("--max-rows", type=int, default=0, help="read at most this many rows (texts, with --line-per value); 0 = all (default)")
    p.add_argument("--streaming", action="store_true",
                   help="stream hub datasets and csv/parquet/.json-array files instead of converting them to Arrow "
                        "first (TSV, JSON Lines and .txt files always stream)")
    p.add_argument("--num-proc", type=int, default=1,
                   help="worker processes: whole files in parallel when several TSV or JSON Lines files are given, "
                        "else normalisation "
                        "(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing corpus in --output-dir (only once the new one is complete; the staging "
                        "directory beside it needs free space of about twice the corpus)")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> "CorpusConfig":
    from corpus.pipeline import CorpusConfig  # here, not above: --help and a bad flag answer without it

    no_input = not args.data_files and not args.dataset
    return CorpusConfig(
        output_dir=args.output_dir,
        data_files=[SAMPLE_FILE] if no_input else args.data_files,
        dataset=args.dataset,
        dataset_config=args.dataset_type,
        text_columns=[c.strip() for c in args.text_column.split(",") if c.strip()] if args.text_column else None,
        cache_dir=args.cache_dir,
        validation_size=args.validation_sample_size,
        lines_per_shard=args.lines_per_shard,
        seed=args.seed,
        lowercase=args.lowercase,
        strip_punctuation=args.strip_punctuation,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        max_rows=args.max_rows,
        streaming=args.streaming,
        num_proc=args.num_proc,
        line_per=args.line_per,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from corpus.pipeline import generate_corpus

    manifest = generate_corpus(config_from_args(args))
    summary = {k: manifest[k] for k in ("rows_read", "rows_kept", "duplicates_removed", "dropped")}
    summary.update({f"{s}_lines": manifest["splits"][s]["lines"] for s in manifest["splits"]})
    print(json.dumps(summary))
    print(f"corpus written to {args.output_dir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
