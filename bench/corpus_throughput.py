"""Benchmark step 1 against three references on a generated 1,000,000-row Amazon review TSV, or on Amazon
Reviews 2023 JSON Lines.

    python bench/corpus_throughput.py                 # 1M rows (and 2M for the memory check)
    python bench/corpus_throughput.py --rows 200000   # quicker
    python bench/corpus_throughput.py --layout 2023   # 1M and 5M review lines of Amazon Reviews 2023, gzipped

The 2023 layout (see bench_2023): step 1 with defaults (column `title`) and with --text-column text, against
j2, a plain loop (json.loads per line, the same normalisation, a set of texts) and j3, the floor (decompress
and split lines), and with `datasets`' cache pointed at an empty directory that must stay empty. Targets: at
least 3x j2, within 1.5x of j3, peak RSS at 5M lines at most 1.2x that at 1M.

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
from typing import Iterator

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


EMOJI = ["\U0001F60D", "\U0001F44D", "\u2764\ufe0f", "\U0001F602", "\U0001F1FA\U0001F1F8"]


def generate_2023(path: str, rows: int, seed: int) -> None:
    """Amazon Reviews 2023 review lines (raw/review_categories/<Category>.jsonl.gz) as json.dumps writes them: the
    official keys in order; a headline (`title`) that is one of a few common ones half the time; a `text` of
    Zipf-distributed words with a log-normal length (median ~200 bytes, a tail to 15 kB) joined by spaces or
    `<br />`, with `&#34;` entities, accented words (\\u escapes) and emoji (surrogate pairs); an `images` list of
    objects on one review in ten. Sentences are drawn from a pool so that millions of lines generate quickly."""
    import json

    rng = random.Random(seed)
    words = vocabulary(rng)
    weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    pool = [review_text(rng, words, weights, "this", 8).replace("<br />", " ") for _ in range(50_000)]
    for i in range(0, len(pool), 10):
        pool[i] = pool[i].replace("a", "\u00e9", 1)
        pool[i + 1] = pool[i + 1].replace(" ", " &#34;", 2)
        pool[i + 2] = pool[i + 2] + " " + EMOJI[i % len(EMOJI)]
    headlines = ["Five Stars", "Great product", "Love it!", "Four Stars", "Works great", "Perfect", "Disappointed",
                 "Good value", "Nice", "Exactly as described", "One Star", "Three Stars", "Awesome", "Not worth it"]
    user = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as f:
        lines = []
        for i in range(rows):
            n = max(1, min(300, round(rng.lognormvariate(0, 1.0) * 2.5)))
            text = rng.choice((" ", " ", "<br />", "<br /><br />")).join(rng.choices(pool, k=n))[:15_000]
            headline = rng.choice(headlines) if rng.random() < 0.5 else rng.choice(pool)[:50].rstrip(" .!?")
            asin = f"B0{rng.getrandbits(40):010X}"
            images = [] if rng.random() < 0.9 else [
                {k: f"https://m.media-amazon.com/images/I/{rng.getrandbits(48):x}._SL{size}_.jpg"
                 for k, size in (("small_image_url", 256), ("medium_image_url", 800), ("large_image_url", 1600))}
                | {"attachment_type": "IMAGE"} for _ in range(rng.randint(1, 3))]
            lines.append(json.dumps({
                "rating": float(rng.randint(1, 5)), "title": headline, "text": text, "images": images, "asin": asin,
                "parent_asin": asin, "user_id": "AE" + "".join(rng.choices(user, k=26)),
                "timestamp": rng.randrange(1_300_000_000_000, 1_690_000_000_000),
                "helpful_vote": rng.choice((0, 0, 0, 1, 2, 5)), "verified_purchase": rng.random() < 0.9}))
            if len(lines) == 10_000:
                f.write(("\n".join(lines) + "\n").encode())
                lines = []
        if lines:
            f.write(("\n".join(lines) + "\n").encode())


def plain_split(texts: Iterator[str], out: str) -> None:
    """The plain loops' common part: normalise each text, keep a set of those seen, write each new one to its
    split (the same hash rule as step 1)."""
    from corpus.normalise import normalise_text
    from corpus.splitting import is_validation, sentence_hash

    seen = set()
    files = {s: open(os.path.join(out, f"{s}.txt"), "w", encoding="utf-8") for s in ("train", "validation")}
    for raw in texts:
        text = normalise_text(raw)
        if not text or text in seen:
            continue
        seen.add(text)
        files["validation" if is_validation(sentence_hash(text, 42), 0.1) else "train"].write(text + "\n")
    for f in files.values():
        f.close()


def j2_plain_loop(path: str, out: str, column: str) -> int:
    """A plain loop over a JSON Lines file: json.loads per line, the same normalisation, a set of texts."""
    import json

    lines = 0

    def texts() -> Iterator[str]:
        nonlocal lines
        with gzip.open(path, "rb") as f:
            for line in f:
                lines += 1
                yield json.loads(line).get(column) or ""

    plain_split(texts(), out)
    return lines


def j3_floor(path: str, out: str) -> int:
    """Decompressing the file and splitting its lines, nothing else."""
    n = 0
    with gzip.open(path, "rb") as f:
        for _ in f:
            n += 1
    return n


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
    rows = 0

    def titles() -> Iterator[str]:
        nonlocal rows
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            header = f.readline().rstrip("\n").split("\t")
            col, width = header.index("product_title"), len(header)
            for line in f:
                rows += 1
                fields = line.rstrip("\n").split("\t")
                if len(fields) == width:
                    yield fields[col]

    plain_split(titles(), out)
    return rows


def r3_floor(path: str, out: str) -> int:
    n = 0
    with gzip.open(path, "rb") as f:
        for line in f:
            line.split(b"\t")
            n += 1
    return n - 1


REFERENCES = {"r1": r1_datasets_row_by_row, "r2": r2_plain_loop, "r3": r3_floor,
              "j2_title": lambda path, out: j2_plain_loop(path, out, "title"),
              "j2_text": lambda path, out: j2_plain_loop(path, out, "text"), "j3": j3_floor}


def measure(command: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB, largest process) of a fresh subprocess.

    Linux carries a parent's peak RSS at fork into the child's figure, so this process stays small:
    inputs are generated in a subprocess of their own.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    output = proc.stdout.read() + proc.stderr.read()
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, output


def bench_2023(args: argparse.Namespace) -> None:
    """Step 1 on Amazon Reviews 2023 review lines, gzipped, as a user runs it: defaults (the `title` column, the
    review's headline) and --text-column text (the review), one process; the references in the same run."""
    inputs = {}
    for rows, seed in ((args.rows, 1), (5 * args.rows, 2)):
        path = os.path.join(args.workdir, f"reviews2023_{rows}.jsonl.gz")
        if not os.path.exists(path):
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--generate-2023", path, str(rows), str(seed)], check=True)
            print(f"generated {path} ({os.path.getsize(path) / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
        inputs[rows] = path
    cache = os.path.join(args.workdir, "hf_home")  # where `datasets` would put an Arrow copy: it must stay empty
    subprocess.run(["rm", "-rf", cache])
    env = {**os.environ, "HF_HOME": cache, "HF_DATASETS_CACHE": os.path.join(cache, "datasets")}
    results = {}
    for rows, path in inputs.items():
        for column in ("title", "text"):
            extra = [] if column == "title" else ["--text-column", "text"]
            out = os.path.join(args.workdir, f"out2023_{column}")
            results[f"ours_{column}_{rows}"] = measure(
                [sys.executable, "corpus/run_corpus_generation.py", "--data-files", path, "--output-dir", out,
                 "--overwrite", "--no-progress", *extra], env)[:2]
    path = inputs[args.rows]
    results["ours_text_num_proc_2"] = measure(  # the flag a user with a second core would add for the reviews
        [sys.executable, "corpus/run_corpus_generation.py", "--data-files", path, "--output-dir",
         os.path.join(args.workdir, "out2023_text"), "--overwrite", "--no-progress", "--text-column", "text",
         "--num-proc", "2"], env)[:2]
    for name in ("j2_title", "j2_text", "j3"):
        out = os.path.join(args.workdir, f"out2023_{name}")
        subprocess.run(["rm", "-rf", out])
        results[name] = measure([sys.executable, __file__, "--reference", name, "--input", path, "--out", out])[:2]
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(cache) for f in files]
    print(f"\n{'run':<28}{'seconds':>9}{'lines/s':>12}{'peak RSS MiB':>14}")
    for name, (seconds, rss) in results.items():
        rows = 5 * args.rows if name.endswith(f"_{5 * args.rows}") else args.rows
        print(f"{name:<28}{seconds:>9.1f}{rows / seconds:>12,.0f}{rss:>14.0f}")
    print()
    floor = results["j3"][0]
    for column in ("title", "text"):
        mine, (big, big_rss) = results[f"ours_{column}_{args.rows}"], results[f"ours_{column}_{5 * args.rows}"]
        faster, of_floor, rss = results[f"j2_{column}"][0] / mine[0], mine[0] / floor, big_rss / mine[1]
        ok = "met" if faster >= 3 and of_floor <= 1.5 and rss <= 1.2 else "NOT met"
        print(f"--text-column {column}{' (default)' if column == 'title' else ''}: {faster:.2f}x as fast as the plain "
              f"json.loads loop, {of_floor:.2f}x the floor's time (decompress and split lines); peak RSS at "
              f"{5 * args.rows:,} lines {rss:.2f}x that at {args.rows:,} (targets >= 3x, <= 1.5x, <= 1.2x: {ok})")
    print(f"files written to the datasets cache: {len(leftovers)}" + (f" ({leftovers[:3]})" if leftovers else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the main input (default: %(default)s)")
    p.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="our --num-proc (default: cores)")
    p.add_argument("--workdir", default="/tmp/bench_corpus", help="scratch directory (default: %(default)s)")
    p.add_argument("--skip-r1", action="store_true", help="skip the slow 2021-demo reference")
    p.add_argument("--layout", choices=("tsv", "2023"), default="tsv",
                   help="tsv: the older Amazon TSV dump (default); 2023: Amazon Reviews 2023 review lines, gzipped "
                        "JSON Lines, --rows and 5 x --rows of them")
    p.add_argument("--generate-2023", nargs=3, help=argparse.SUPPRESS)  # internal: PATH ROWS SEED
    p.add_argument("--reference", choices=REFERENCES, help=argparse.SUPPRESS)  # internal: run one reference
    p.add_argument("--generate", nargs=4, help=argparse.SUPPRESS)  # internal: PATH ROWS SEED DISTINCT_SHARE
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.generate:
        generate(args.generate[0], int(args.generate[1]), int(args.generate[2]), float(args.generate[3]))
        return
    if args.generate_2023:
        generate_2023(args.generate_2023[0], int(args.generate_2023[1]), int(args.generate_2023[2]))
        return
    if args.reference:
        os.makedirs(args.out, exist_ok=True)
        print(REFERENCES[args.reference](args.input, args.out))
        return
    os.makedirs(args.workdir, exist_ok=True)
    if args.layout == "2023":
        bench_2023(args)
        return
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
