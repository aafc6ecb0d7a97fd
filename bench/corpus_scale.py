"""Step 1 at dump scale: peak RSS and wall time on millions of distinct lines (not a test; takes a while).

    python bench/corpus_scale.py                              # titles 1M, 5M, 20M; bodies 1M, 5M
    python bench/corpus_scale.py --titles 1000000 --bodies    # quicker

Inputs are Amazon-format TSVs (uncompressed, so that generating them stays quick):
  titles  N distinct title-like lines (~60 bytes: a generated title made unique by a model number),
          read from the default column, product_title
  bodies  N review-body-shaped rows (median ~200 bytes, a log-normal tail to several kB, nearly all
          distinct), read with --text-column review_body
Each run is corpus/run_corpus_generation.py with defaults in a fresh process; peak RSS comes from wait4.
The reference, in the same run on the title inputs up to 5M, is the same read, normalisation and split with
the seen hashes in a Python set (as step 1 kept them before), to show what a distinct line cost there.
Targets: peak RSS at 20M titles <= 1 GiB and <= 1.5x that at 5M; growth <= 16 bytes per distinct line.
Step 1 spills its sentences to disk while it reads (see corpus/dedup.py): the free disk space it needs
beside --output-dir is about twice the corpus written.
"""
import argparse
import itertools
import os
import random
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "marketplace\tproduct_id\tproduct_title\tstar_rating\treview_body\n"


def generate(path: str, kind: str, rows: int, seed: int) -> None:
    """A TSV of `rows` rows whose `kind` column (titles or bodies) is distinct on every row."""
    from corpus.sample_data import _title
    from corpus_throughput import review_text, vocabulary

    rng = random.Random(seed)
    words = vocabulary(rng)
    weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER)
        for start in range(0, rows, 10_000):
            block = []
            for i in range(start, min(rows, start + 10_000)):
                title, _ = _title(rng)
                # Model numbers, sizes and pack counts are what make real titles unique.
                title = f"{title} {rng.choice(['', 'Size ', 'Pack of ', 'Model '])}{i:X}"
                body = review_text(rng, words, weights, "it", 30) + f" ({i:X})" if kind == "bodies" else "Great."
                block.append(f"US\tB{i:09d}\t{title}\t5\t{body}\n")
            f.write("".join(block))


def reference_set_dedup(path: str, column: str) -> None:
    """The same read, normalisation and split, with the seen hashes in a Python set."""
    from corpus.normalise import normalise_text
    from corpus.sources import SourceStats, read_text_batches
    from corpus.splitting import is_validation, sentence_hash

    seen: set[int] = set()
    out = {s: open(os.devnull, "w") for s in ("train", "validation")}
    for batch in read_text_batches([path], None, None, [column], SourceStats()):
        for text in batch:
            s = normalise_text(text)
            h = sentence_hash(s, 42)
            if s and h not in seen:
                seen.add(h)
                out["validation" if is_validation(h, 0.1) else "train"].write(s + "\n")


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a fresh subprocess; this process stays small, it only waits."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if status:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--titles", type=int, nargs="*", default=[1_000_000, 5_000_000, 20_000_000],
                   help="sizes of the distinct-title inputs (default: %(default)s)")
    p.add_argument("--bodies", type=int, nargs="*", default=[1_000_000, 5_000_000],
                   help="sizes of the review-body inputs (default: %(default)s)")
    p.add_argument("--workdir", default="/tmp/bench_corpus_scale", help="scratch directory (default: %(default)s)")
    p.add_argument("--task", nargs="+", help=argparse.SUPPRESS)  # internal: generate or reference, in a fresh process
    args = p.parse_args()
    if args.task:
        if args.task[0] == "generate":
            generate(args.task[1], args.task[2], int(args.task[3]), int(args.task[4]))
        else:
            reference_set_dedup(args.task[1], args.task[2])
        return
    os.makedirs(args.workdir, exist_ok=True)
    me = [sys.executable, os.path.abspath(__file__), "--task"]
    results = []
    for kind, sizes, column in (("titles", args.titles, "product_title"), ("bodies", args.bodies, "review_body")):
        for size in sorted(sizes):
            path = os.path.join(args.workdir, f"{kind}_{size}.tsv")
            if not os.path.exists(path):
                started = time.perf_counter()
                subprocess.run([*me, "generate", path + ".tmp", kind, str(size), str(size % 997)], cwd=REPO, check=True)
                os.replace(path + ".tmp", path)
                print(f"generated {path} ({os.path.getsize(path) / 2**20:,.0f} MiB) in "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
            out = os.path.join(args.workdir, "out")
            seconds, rss = measure([sys.executable, "corpus/run_corpus_generation.py", "--data-files", path,
                                    "--text-column", column, "--output-dir", out, "--overwrite", "--no-progress"])
            results.append((kind, size, "ours", seconds, rss))
            print(f"{kind} {size:,}: {seconds:.1f} s, {rss:.0f} MiB", file=sys.stderr)
            if kind == "titles" and size <= 5_000_000:
                seconds, rss = measure([*me, "reference", path, column])
                results.append((kind, size, "python set", seconds, rss))
    print(f"\n{'input':<8}{'lines':>12}  {'run':<12}{'seconds':>9}{'lines/s':>12}{'peak RSS MiB':>14}")
    for kind, size, run, seconds, rss in results:
        print(f"{kind:<8}{size:>12,}  {run:<12}{seconds:>9.1f}{size / seconds:>12,.0f}{rss:>14.0f}")
    print()
    for kind in ("titles", "bodies"):
        for run in ("ours", "python set"):
            points = sorted((size, rss) for k, size, r, _, rss in results if k == kind and r == run)
            if len(points) > 1:
                (n0, r0), (n1, r1) = points[-2], points[-1]
                print(f"{kind} {run}: {(r1 - r0) * 2**20 / (n1 - n0):.1f} bytes of peak RSS per extra distinct "
                      f"line ({n0:,} -> {n1:,}), {r1 / r0:.2f}x")
    ours = {size: rss for kind, size, run, _, rss in results if kind == "titles" and run == "ours"}
    if 20_000_000 in ours and 5_000_000 in ours:
        ok = ours[20_000_000] <= 1024 and ours[20_000_000] <= 1.5 * ours[5_000_000]
        print(f"target at 20M titles (<= 1024 MiB and <= 1.5x 5M): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
