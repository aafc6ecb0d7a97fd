"""Step 2 under a memory budget, on review-body text: peak RSS, and what fitting on a sample costs.

    python bench/tokenizer_memory.py                   # 1M and 5M lines (5M: about 1.8 GB of text; takes a while)
    python bench/tokenizer_memory.py --sizes 200000    # quicker

For each size, a corpus laid out as step 1 writes it (train/ shards of 10,000 lines, and up to 20,000
validation lines) of review bodies: Zipf-distributed words, log-normal lengths (median ~200 bytes, a tail
to several kB). run_tokenizer_fitting.py (vocabulary 30,000) runs on it in a fresh process:
  default  with the default --memory-budget (half of this machine's memory)
  sampled  with --memory-budget room for a quarter of the text, by step 2's own estimate
Prints, for each run: seconds, peak RSS, the budget, lines fitted and bytes per token on the validation
lines; then for each size the ratio of the sampled tokenizer's bytes per token to the default one's
(below 1: the sample's tokenizer compresses held-out text less) and each run's peak RSS as a share of its
budget. Not a test: nothing is asserted.
"""
import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time

from corpus_throughput import measure, review_text, vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN_WORDS = 28  # a median line of ~200 bytes
LINES_PER_SHARD = 10_000


def generate(directory: str, lines: int, seed: int) -> None:
    """train/ with `lines` review bodies and validation/ with up to 20,000 more; prints their median length."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    products = [f"{rng.choice(words)}{rng.randrange(1000)}" for _ in range(5_000)]
    sizes = []
    for split, count in (("train", lines), ("validation", min(20_000, max(1, lines // 10)))):
        os.makedirs(os.path.join(directory, split), exist_ok=True)
        for shard, start in enumerate(range(0, count, LINES_PER_SHARD)):
            block = [review_text(rng, words, weights, rng.choice(products), MEAN_WORDS)
                     for _ in range(min(LINES_PER_SHARD, count - start))]
            sizes.extend(len(line.encode()) for line in block[:1000])
            with open(os.path.join(directory, split, f"corpus_chunk_{shard:05d}.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(block) + "\n")
    print(f"median line {statistics.median(sizes):.0f} bytes, 99th percentile "
          f"{statistics.quantiles(sizes, n=100)[-1]:.0f}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000],
                   help="train lines of each corpus (default: %(default)s)")
    p.add_argument("--workdir", default="/tmp/bench_tokenizer_memory", help="scratch directory (default: %(default)s)")
    p.add_argument("--generate", nargs=3, help=argparse.SUPPRESS)  # internal: DIRECTORY LINES SEED
    args = p.parse_args()
    if args.generate:
        generate(args.generate[0], int(args.generate[1]), int(args.generate[2]))
        return
    from tokenizer.fitting import estimate_fit_memory

    rows = []
    for size in args.sizes:
        corpus = os.path.join(args.workdir, f"reviews_{size}")
        if not os.path.isdir(corpus):  # written by a subprocess: this one's peak RSS would carry into the runs'
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--generate", corpus, str(size), str(size)], check=True)
            print(f"generated {corpus} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        train = os.path.join(corpus, "train")
        text_bytes = sum(os.path.getsize(os.path.join(train, f)) for f in os.listdir(train))
        quarter = f"{estimate_fit_memory(text_bytes / 4)}b"  # room for a quarter of the text
        for run, extra in (("default", []), ("sampled", ["--memory-budget", quarter])):
            out = os.path.join(args.workdir, f"tok_{size}_{run}")
            seconds, rss, _ = measure([sys.executable, "tokenizer/run_tokenizer_fitting.py", "--corpus-dir", train,
                                       "--output-dir", out, "--overwrite", "--no-progress", *extra])
            with open(os.path.join(out, "tokenizer_report.json"), encoding="utf-8") as f:
                report = json.load(f)
            rows.append({"size": size, "run": run, "seconds": seconds, "rss_mib": rss, **report})
            print(json.dumps({k: rows[-1][k] for k in ("size", "run", "seconds", "rss_mib", "fitted_lines",
                                                         "bytes_per_token", "memory_budget_bytes")}), file=sys.stderr)
    print(f"\n{'lines':>11} {'run':<8}{'seconds':>9}{'peak RSS MiB':>14}{'budget MiB':>12}{'lines fitted':>14}"
          f"{'MiB fitted':>12}{'bytes/token':>13}")
    for r in rows:
        print(f"{r['size']:>11,} {r['run']:<8}{r['seconds']:>9.1f}{r['rss_mib']:>14.0f}"
              f"{r['memory_budget_bytes'] / 2**20:>12,.0f}{r['fitted_lines']:>14,}{r['fitted_bytes'] / 2**20:>12,.1f}"
              f"{r['bytes_per_token']:>13.3f}")
    print()
    for default, sampled in zip(rows[::2], rows[1::2]):
        cost = sampled["bytes_per_token"] / default["bytes_per_token"]
        share = sampled["fitted_lines"] / sampled["corpus_lines"]
        print(f"{default['size']:,} lines: bytes/token sampled / default {cost:.3f} (on {share:.1%} of the lines); "
              f"peak RSS / budget {default['rss_mib'] * 2**20 / default['memory_budget_bytes']:.2f} default, "
              f"{sampled['rss_mib'] * 2**20 / sampled['memory_budget_bytes']:.2f} sampled")


if __name__ == "__main__":
    main()
