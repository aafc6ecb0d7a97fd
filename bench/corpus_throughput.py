"""Benchmark step 1 against three references on a generated 1,000,000-row Amazon review TSV.

    python bench/corpus_throughput.py                 # 1M rows (and 2M for the memory check)
    python bench/corpus_throughput.py --rows 200000   # quicker

Two inputs: generated rows (titles repeated over a product's reviews, as in the dump), and the same with
one title in three made new (a suffix with an HTML entity), where per-title work dominates.
In the same run, on the same files:
  ours  corpus/run_corpus_generation.py with defaults (one process) and --num-proc N, and --streaming
        on 1M and 2M rows for memory
  r1    the 2021 demo's way: a `datasets` table iterated row by row in Python, per-row normalisation,
        a list of lines, one write per shard
  r2    a plain Python loop over the decompressed lines: the same normalisation, dedup and split
  r3    the floor: decompressing and splitting the lines, nothing else
Prints rows/s and peak RSS (largest process) of each, and the ratios; targets with one process: at least
1.5x as fast as r2 and within 2x of r3. Not a test: nothing is asserted.
"""
import argparse
import gzip
import itertools
import os
import random
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vocabulary(rng: random.Random, size: int = 30_000) -> list[str]:
    """Pseudo-words of 1-4 syllables: review prose with a realistic spread of word lengths."""
    syllables = [c + v for c in "bcdfghjklmnprstvwyz" for v in ("a", "e", "i", "o", "u", "ou", "ea", "ai")]
    return ["".join(rng.choice(syllables) for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4)))) for _ in range(size)]


def review_text(rng: random.Random, words: list[str], weights: list[float], product: str, mean_words: float) -> str:
    """Zipf-distributed words in sentences, log-normal length (a long tail of essays), some HTML breaks."""
    n = max(1, min(2_000, int(rng.lognormvariate(0, 1.1) * mean_words)))
    picked = rng.choices(words, cum_weights=weights, k=n)
    picked[rng.randrange(n)] = product
    out, start = [], 0
    while start < n:
        stop = start + rng.randint(5, 16)
        sentence = " ".join(picked[start:stop])
        out.append(sentence[:1].upper() + sentence[1:] + rng.choice((".", ".", ".", "!", "?")))
        start = stop
    return rng.choice((" ", " ", " ", "<br />", "<br /><br />")).join(out)


def generate(path: str, rows: int, seed: int, distinct_share: float = 0.0) -> None:
    """An Amazon-format TSV of exactly `rows` reviews, sized like the real dump: titles from the sample
    generator repeated over a long-tailed number of reviews per product, headlines and review bodies of
    Zipf-distributed words with log-normal lengths (about 300 bytes a row, 2.5x gzip ratio).

    With `distinct_share`, that share of rows gets a title of its own (a suffix with an HTML entity), the
    case where normalisation and hashing, not reading, take the time."""
    from corpus.sample_data import HEADER, _title

    rng = random.Random(seed)
    words = vocabulary(rng)
    weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    titles: list[tuple[str, str]] = []
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as f:
        f.write(("\t".join(HEADER) + "\n").encode())
        written = 0
        while written < rows:
            title, category = rng.choice(titles) if titles and rng.random() < 0.05 else _title(rng)
            titles.append((title, category))
            pid, parent = f"B{rng.randrange(10**9):09d}", str(rng.randrange(10**9))
            product = title.split(",")[0].split(" - ")[0].strip().split(" ")[-1].lower()
            block = []
            for _ in range(min(rows - written, min(60, int(rng.paretovariate(1.3))))):
                row_title = title
                if distinct_share and rng.random() < distinct_share:
                    row_title = f"{title} &amp; #{written + len(block):X} {rng.choice(words).title()}"
                headline = review_text(rng, words, weights, product, 3)[:60]
                body = review_text(rng, words, weights, product, 12)
                block.append("\t".join(["US", str(rng.randrange(10**8)), f"R{rng.randrange(36**12):012X}", pid, parent,
                                        row_title, category, str(rng.randint(1, 5)), str(rng.randrange(20)),
                                        str(rng.randrange(40)), "N", rng.choice("YN"), headline, body,
                                        f"20{rng.randint(5, 15):02d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"]))
            f.write(("\n".join(block) + "\n").encode("utf-8"))
            written += len(block)


def r1_datasets_row_by_row(path: str, out: str) -> int:
    import csv

    import datasets

    from corpus.normalise import normalise_text

    datasets.disable_progress_bars()
    table = datasets.load_dataset("csv", data_files=path, sep="\t", quoting=csv.QUOTE_NONE, on_bad_lines="skip",
                                  encoding_errors="replace", split="train", cache_dir=os.path.join(out, "cache"))
    lines, seen, n = [], set(), 0
    for row in table:
        n += 1
        title = normalise_text(row["product_title"] or "")
        if title and title not in seen:
            seen.add(title)
            lines.append(title)
    random.Random(42).shuffle(lines)
    cut = int(len(lines) * 0.1)
    for split, part in (("validation", lines[:cut]), ("train", lines[cut:])):
        os.makedirs(os.path.join(out, split), exist_ok=True)
        for i in range(0, len(part), 10_000):
            with open(os.path.join(out, split, f"corpus_chunk_{i // 10_000:05d}.txt"), "w") as f:
                f.write("\n".join(part[i : i + 10_000]) + "\n")
    return n


def r2_plain_loop(path: str, out: str) -> int:
    from corpus.normalise import normalise_text
    from corpus.splitting import is_validation, sentence_hash

    seen, n = set(), 0
    files = {s: open(os.path.join(out, f"{s}.txt"), "w", encoding="utf-8") for s in ("train", "validation")}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\n").split("\t")
        col, width = header.index("product_title"), len(header)
        for line in f:
            n += 1
            fields = line.rstrip("\n").split("\t")
            if len(fields) != width:
                continue
            title = normalise_text(fields[col])
            if not title or title in seen:
                continue
            seen.add(title)
            files["validation" if is_validation(sentence_hash(title, 42), 0.1) else "train"].write(title + "\n")
    for f in files.values():
        f.close()
    return n


def r3_floor(path: str, out: str) -> int:
    n = 0
    with gzip.open(path, "rb") as f:
        for line in f:
            line.split(b"\t")
            n += 1
    return n - 1


REFERENCES = {"r1": r1_datasets_row_by_row, "r2": r2_plain_loop, "r3": r3_floor}


def measure(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB, largest process) of a fresh subprocess.

    Linux carries a parent's peak RSS at fork into the child's figure, so this process stays small:
    inputs are generated in a subprocess of their own.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    output = proc.stdout.read() + proc.stderr.read()
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, output


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the main input (default: %(default)s)")
    p.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="our --num-proc (default: cores)")
    p.add_argument("--workdir", default="/tmp/bench_corpus", help="scratch directory (default: %(default)s)")
    p.add_argument("--skip-r1", action="store_true", help="skip the slow 2021-demo reference")
    p.add_argument("--reference", choices=REFERENCES, help=argparse.SUPPRESS)  # internal: run one reference
    p.add_argument("--generate", nargs=4, help=argparse.SUPPRESS)  # internal: PATH ROWS SEED DISTINCT_SHARE
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.generate:
        generate(args.generate[0], int(args.generate[1]), int(args.generate[2]), float(args.generate[3]))
        return
    if args.reference:
        os.makedirs(args.out, exist_ok=True)
        print(REFERENCES[args.reference](args.input, args.out))
        return
    os.makedirs(args.workdir, exist_ok=True)
    inputs = {}
    for name, rows, seed, share in (("main", args.rows, 1, 0.0), ("double", 2 * args.rows, 2, 0.0),
                                    ("distinct", args.rows, 3, 1 / 3)):
        path = os.path.join(args.workdir, f"reviews_{rows}.tsv.gz" if not share else f"distinct_{rows}.tsv.gz")
        if not os.path.exists(path):
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--generate", path, str(rows), str(seed), str(share)], check=True)
            print(f"generated {path} ({os.path.getsize(path) / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
        inputs[name] = path
    results = {}

    def ours(name: str, path: str, *extra: str) -> None:
        out = os.path.join(args.workdir, f"out_{name}")
        results[name] = measure([sys.executable, "corpus/run_corpus_generation.py", "--data-files", path, "--output-dir",
                                 out, "--overwrite", "--no-progress", *extra])[:2]

    def reference(name: str, label: str, path: str) -> None:
        out = os.path.join(args.workdir, f"out_{label}")
        subprocess.run(["rm", "-rf", out])
        results[label] = measure([sys.executable, __file__, "--reference", name, "--input", path, "--out", out])[:2]

    ours("ours", inputs["main"], "--num-proc", str(args.num_proc))
    ours("ours_1proc", inputs["main"])
    ours("ours_streaming", inputs["main"], "--streaming")
    ours("ours_streaming_2x", inputs["double"], "--streaming")
    for name in ("r2", "r3") + (() if args.skip_r1 else ("r1",)):
        reference(name, name, inputs["main"])
    ours("distinct_ours_1proc", inputs["distinct"])
    for name in ("r2", "r3"):
        reference(name, f"distinct_{name}", inputs["distinct"])
    print(f"\n{'run':<28}{'seconds':>9}{'rows/s':>12}{'peak RSS MiB':>14}")
    for name, (seconds, rss) in results.items():
        rows = 2 * args.rows if name.endswith("2x") else args.rows
        print(f"{name:<28}{seconds:>9.1f}{rows / seconds:>12,.0f}{rss:>14.0f}")
    print()
    if "r1" in results:
        print(f"ours vs r1 (2021 demo, datasets row by row): {results['r1'][0] / results['ours'][0]:.1f}x faster")
    for prefix, what in (("", "generated rows"), ("distinct_", "rows where one title in three is new")):
        mine = results[f"{prefix}ours_1proc"][0]
        faster, floor = results[f"{prefix}r2"][0] / mine, mine / results[f"{prefix}r3"][0]
        ok = "met" if faster >= 1.5 and floor <= 2 else "NOT met"
        print(f"{what}, one process: {faster:.2f}x as fast as r2 (plain loop), {floor:.2f}x the r3 floor's time "
              f"(targets >= 1.5x and <= 2x: {ok})")
    s1, s2 = results["ours_streaming"][1], results["ours_streaming_2x"][1]
    print(f"--streaming peak RSS: {s1:.0f} MiB at {args.rows:,} rows, {s2:.0f} MiB at {2 * args.rows:,} rows")

if __name__ == "__main__":
    main()
