"""Benchmark step 2 against the bare `tokenizers` training call on the same ~100 MB corpus.

    python bench/tokenizer_overhead.py                # ~100 MB
    python bench/tokenizer_overhead.py --megabytes 20 # the small corpus, where fixed costs show most

Both run as fresh processes on the same shards with the same settings (ByteLevel BPE, vocabulary
30,000, min frequency 2, RoBERTa special tokens); the script's extra work is its input checks, the
report on the validation split and saving the `transformers` files. Prints both times and the ratio.
"""
import argparse
import os
import random
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARE = """
import sys
from tokenizers import AddedToken
from tokenizers.implementations import ByteLevelBPETokenizer
files = sys.argv[2:]
bpe = ByteLevelBPETokenizer()
bpe.train(files, vocab_size=30000, min_frequency=2, show_progress=False,
          special_tokens=["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True)])
bpe.save(sys.argv[1])
"""


def write_corpus(directory: str, megabytes: int, seed: int = 0) -> None:
    """Shards of synthetic titles and review sentences, one per line, with a numeric long tail."""
    from corpus.sample_data import PHRASES, _body, _title

    rng = random.Random(seed)
    for split, size in (("train", megabytes << 20), ("validation", megabytes << 16)):
        os.makedirs(os.path.join(directory, split), exist_ok=True)
        written, shard = 0, 0
        while written < size:
            lines = []
            for _ in range(20_000):
                title, _ = _title(rng)
                lines.append(f"{title} {rng.randrange(10**6)}")
                lines.append(_body(rng, title).replace("<br />", " ") + " " + rng.choice(PHRASES).format(
                    age=rng.randrange(100), product=rng.randrange(10**4), adj=rng.randrange(10**3)))
            data = ("\n".join(lines) + "\n").encode()
            with open(os.path.join(directory, split, f"corpus_chunk_{shard:05d}.txt"), "wb") as f:
                f.write(data)
            written, shard = written + len(data), shard + 1


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--megabytes", type=int, default=100, help="size of the training split (default: %(default)s)")
    p.add_argument("--workdir", default="/tmp/bench_tokenizer", help="scratch directory (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each, best time kept (default: %(default)s)")
    args = p.parse_args()
    corpus = os.path.join(args.workdir, f"corpus_{args.megabytes}mb")
    if not os.path.isdir(corpus):
        write_corpus(corpus, args.megabytes)
    train = os.path.join(corpus, "train")
    files = sorted(os.path.join(train, f) for f in os.listdir(train))
    size = sum(os.path.getsize(f) for f in files) / 2**20
    ours_times, bare_times = [], []
    for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits both alike
        ours_times.append(timed([sys.executable, "tokenizer/run_tokenizer_fitting.py", "--corpus-dir", train,
                                 "--output-dir", os.path.join(args.workdir, "ours"), "--overwrite", "--no-progress"]))
        bare_times.append(timed([sys.executable, "-c", BARE, os.path.join(args.workdir, "bare.json"), *files]))
    ours, bare = min(ours_times), min(bare_times)
    print(f"corpus: {size:.0f} MiB in {len(files)} shards")
    print(f"bare tokenizers training (fresh process): {bare:7.1f} s")
    print(f"run_tokenizer_fitting.py (fresh process): {ours:7.1f} s")
    print(f"ratio: {ours / bare:.3f}x (target: within 1.15x)")


if __name__ == "__main__":
    main()
