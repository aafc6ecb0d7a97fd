"""Step 3 at corpus scale: 1M, 5M and 20M unique title-like lines (not a test; takes a while).

    python bench/scale.py                      # 1M, 5M and 20M lines (20M: about 1 GB of text)
    python bench/scale.py --sizes 1000000 5000000

For each size, on a corpus laid out as step 1 writes it (train/ and validation/ shards, 10% validation)
and one 8,000-token tokenizer fitted on the 1M corpus:
  cache    building the token cache of the train split (`encode_split`, fresh process) against the bare
           `tokenizers` call on the same lines (read in chunks, `Tokenizer.encode_batch_fast`, ids kept)
  start    run_training.py --model-size tiny --max-steps 5, warm cache: seconds from start to the first
           optimizer step (its own log line), and the time of one periodic validation at the defaults
  rss      peak RSS of that step-3 process
  no-pack  the same run with --no-packing (sentences grouped by length): start-up and peak RSS
  step 2   (--tokenizer-memory) peak RSS of run_tokenizer_fitting.py at each size, on all lines and with
           --max-lines 1000000
Targets: RSS at the largest size <= 1.2x that at 1M and < 2 GiB; warm start <= 15 s; validation <= 10 s;
cache build >= 0.8x the bare encoder's throughput; --no-packing's start-up and RSS <= 1.2x packing's.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES_PER_SHARD = 10_000


def generate(directory: str, lines: int, seed: int) -> None:
    """`lines` unique title-like lines (~48 bytes), split 90/10 by hash into step 1's shard layout."""
    from corpus.sample_data import _title
    from corpus.splitting import is_validation, sentence_hash
    from corpus.writing import ShardWriter

    rng = random.Random(seed)
    writers = {s: ShardWriter(os.path.join(directory, s), LINES_PER_SHARD) for s in ("train", "validation")}
    for i in range(lines):
        title, _ = _title(rng)
        # Model numbers, sizes and pack counts are what make real titles unique.
        line = f"{title} {rng.choice(['', 'Size ', 'Pack of ', 'Model '])}{i:X}"
        writers["validation" if is_validation(sentence_hash(line, 42), 0.1) else "train"].write(line)
    for w in writers.values():
        w.close()


def bare_encode(train_dir: str, tokenizer_file: str) -> float:
    """Seconds for the bare tokenizers call over the split (the reference of the cache build)."""
    from tokenizers import Tokenizer

    from training.token_cache import ENCODE_CHUNK_BYTES, read_line_chunks, text_files

    tokenizer = Tokenizer.from_file(tokenizer_file)
    started = time.perf_counter()
    for lines, _ in read_line_chunks(text_files(train_dir, "train"), ENCODE_CHUNK_BYTES):
        [e.ids for e in tokenizer.encode_batch_fast(lines, add_special_tokens=False)]
    return time.perf_counter() - started


def cache_build(train_dir: str, tokenizer_file: str, cache_dir: str) -> float:
    from training.token_cache import encode_split, text_files

    started = time.perf_counter()
    encode_split(text_files(train_dir, "train"), tokenizer_file, cache_dir, 2)
    return time.perf_counter() - started


def measure(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB (from wait4: this process stays small, it only waits) and stderr."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    err = proc.stderr.read()
    if status:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, err


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    p.add_argument("--workdir", default="/tmp/bench_scale", help="scratch directory (default: %(default)s)")
    p.add_argument("--tokenizer-memory", action="store_true", help="also measure step 2's peak RSS at each size")
    p.add_argument("--task", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    args = p.parse_args()
    if args.task:
        kind, *rest = args.task
        if kind == "generate":
            generate(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "bare":
            print(json.dumps({"seconds": bare_encode(rest[0], rest[1])}))
        elif kind == "cache":
            print(json.dumps({"seconds": cache_build(rest[0], rest[1], rest[2])}))
        return
    os.makedirs(args.workdir, exist_ok=True)
    me = [sys.executable, os.path.abspath(__file__), "--task"]
    tokenizer = os.path.join(args.workdir, "tokenizer")
    rows = []
    for size in sorted(args.sizes):
        corpus = os.path.join(args.workdir, f"corpus_{size}")
        if not os.path.isdir(os.path.join(corpus, "validation")):
            started = time.perf_counter()
            subprocess.run([*me, "generate", corpus, str(size), "1"], check=True)
            print(f"generated {corpus} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
            subprocess.run([sys.executable, "tokenizer/run_tokenizer_fitting.py", "--corpus-dir", f"{corpus}/train",
                            "--output-dir", tokenizer, "--vocab-size", "8000", "--max-lines", "1000000", "--no-progress"],
                           cwd=REPO, check=True, capture_output=True)
        tokenizer_file = os.path.join(tokenizer, "tokenizer.json")
        cache = os.path.join(args.workdir, f"cache_{size}")
        subprocess.run(["rm", "-rf", cache])
        bare = json.loads(subprocess.run([*me, "bare", f"{corpus}/train", tokenizer_file], check=True,
                                         capture_output=True, text=True).stdout)["seconds"]
        ours = json.loads(subprocess.run([*me, "cache", f"{corpus}/train", tokenizer_file, cache], check=True,
                                         capture_output=True, text=True).stdout)["seconds"]
        job = os.path.join(args.workdir, f"job_{size}")
        train = ["training/run_training.py", "--path-to-train-set", f"{corpus}/train", "--path-to-val-set",
                 f"{corpus}/validation", "--path-to-tokenizer", tokenizer, "--model-size", "tiny", "--max-steps", "5",
                 "--cache-dir", cache, "--no-progress"]
        subprocess.run(["rm", "-rf", job])
        measure([sys.executable, *train, "--job-dir", job])  # warms the validation split's cache too
        subprocess.run(["rm", "-rf", job])
        wall, rss, err = measure([sys.executable, *train, "--job-dir", job])
        first = float(re.search(r"first optimizer step done ([\d.]+) s", err).group(1))
        validation = float(re.search(r"validation at step \d+ took ([\d.]+) s", err).group(1))
        subprocess.run(["rm", "-rf", job])
        _, rss_np, err = measure([sys.executable, *train, "--job-dir", job, "--no-packing"])
        first_np = float(re.search(r"first optimizer step done ([\d.]+) s", err).group(1))
        rows.append({"lines": size, "bare_s": bare, "cache_s": ours, "first_step_s": first,
                     "validation_s": validation, "rss_mib": rss, "wall_s": wall,
                     "no_packing_first_step_s": first_np, "no_packing_rss_mib": rss_np})
        if args.tokenizer_memory:
            for max_lines in ("0", "1000000"):
                seconds, peak, _ = measure([sys.executable, "tokenizer/run_tokenizer_fitting.py", "--corpus-dir",
                                            f"{corpus}/train", "--output-dir", os.path.join(args.workdir, "tok_probe"),
                                            "--vocab-size", "8000", "--max-lines", max_lines, "--overwrite",
                                            "--no-progress"])
                rows[-1][f"step2_max_lines_{max_lines}"] = {"seconds": round(seconds, 1), "rss_mib": round(peak)}
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"\n{'lines':>12}{'bare enc s':>12}{'cache s':>9}{'ratio':>7}{'1st step s':>12}{'val s':>7}{'RSS MiB':>9}"
          f"{'no-packing: 1st step s':>24}{'RSS MiB':>9}")
    for r in rows:
        print(f"{r['lines']:>12,}{r['bare_s']:>12.1f}{r['cache_s']:>9.1f}{r['bare_s'] / r['cache_s']:>7.2f}"
              f"{r['first_step_s']:>12.1f}{r['validation_s']:>7.1f}{r['rss_mib']:>9.0f}"
              f"{r['no_packing_first_step_s']:>24.1f}{r['no_packing_rss_mib']:>9.0f}")
    for r in rows:
        if "step2_max_lines_0" in r:
            print(f"step 2 at {r['lines']:,} lines: all lines {r['step2_max_lines_0']}, --max-lines 1000000 "
                  f"{r['step2_max_lines_1000000']}")
    small, large = rows[0], rows[-1]
    ok = lambda c: "met" if c else "NOT met"
    print(f"\nRSS {large['lines']:,} / {small['lines']:,}: {large['rss_mib'] / small['rss_mib']:.2f}x "
          f"(target <= 1.2x and < 2048 MiB: {ok(large['rss_mib'] <= 1.2 * small['rss_mib'] and large['rss_mib'] < 2048)})")
    print(f"warm start to first step <= 15 s at every size: {ok(all(r['first_step_s'] <= 15 for r in rows))}")
    print(f"periodic validation <= 10 s: {ok(all(r['validation_s'] <= 10 for r in rows))}")
    print(f"cache build >= 0.8x the bare encoder: {ok(all(r['bare_s'] / r['cache_s'] >= 0.8 for r in rows))}")
    np_first, np_rss = large["no_packing_first_step_s"] / large["first_step_s"], large["no_packing_rss_mib"] / large["rss_mib"]
    print(f"--no-packing at {large['lines']:,}: start-up {np_first:.2f}x and peak RSS {np_rss:.2f}x packing's "
          f"(target <= 1.2x: {ok(np_first <= 1.2 and np_rss <= 1.2)})")


if __name__ == "__main__":
    main()
