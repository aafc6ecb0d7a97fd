import json
import os
import subprocess
import sys

import pytest

from corpus.sample_data import write_sample_reviews
from tokenizer.fitting import fit_tokenizer, save_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A model small enough to train for a few dozen steps in seconds on two CPU cores.
TINY_MODEL = ["--model-size", "tiny", "--hidden-size", "64", "--num-layers", "2", "--num-heads", "2",
              "--max-seq-length", "64", "--batch-size", "16"]


def scalars(job, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard tag of a job; steps a resumed run purged are left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(job, "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def run_script(script: str, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the three command-line scripts as a user would, from the repository root."""
    result = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def run_in_process(script: str, *args: str, input: str | None = None, check: bool = True):
    """A script's main() through run_main, as its __main__ runs it, in this process: no new interpreter to
    import torch, Lightning and transformers into (9 s each here). For what prints or exits, not logs."""
    import contextlib
    import importlib
    import io

    from common import run_main

    main = importlib.import_module(script.removesuffix(".py").replace("/", ".")).main
    out, err = io.StringIO(), io.StringIO()
    stdin, sys.stdin = sys.stdin, io.StringIO(input or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_main(lambda: main(list(args)))
    finally:
        sys.stdin = stdin
    if check and code != 0:
        raise AssertionError(f"{script} failed ({code}):\n{err.getvalue()[-3000:]}")
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def sample_tsv(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("data") / "amazon_reviews_us_test.tsv.gz")
    write_sample_reviews(path, n_products=400, seed=7)
    return path


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, sample_tsv) -> dict:
    """The three steps end to end on a small generated TSV; shared by the tests that inspect the result."""
    root = tmp_path_factory.mktemp("pipeline")
    corpus, tok, job = str(root / "corpus"), str(root / "tokenizer"), str(root / "job")
    run_script("corpus/run_corpus_generation.py", "--data-files", sample_tsv, "--output-dir", corpus, "--no-progress")
    run_script("tokenizer/run_tokenizer_fitting.py", "--corpus-dir", f"{corpus}/train", "--output-dir", tok,
               "--vocab-size", "1000", "--no-progress")
    train = run_script(
        "training/run_training.py", "--job-dir", job, "--path-to-train-set", f"{corpus}/train",
        "--path-to-val-set", f"{corpus}/validation", "--path-to-tokenizer", tok, *TINY_MODEL,
        "--max-steps", "40", "--validate-every-n-steps", "10", "--checkpoint-every-n-steps", "20", "--lr", "2e-3",
        "--accelerator", "cpu", "--no-progress",
    )
    return {"corpus": corpus, "tokenizer": tok, "job": job, "train_stdout": train.stdout,
            "final_metrics": json.load(open(os.path.join(job, "final_metrics.json")))}


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A small ByteLevel BPE tokenizer with RoBERTa's special ids, for masking and loss tests."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tok")
    (root / "c.txt").write_text("\n".join(f"baby bottle {i} soft blanket pink blue" for i in range(500)) + "\n")
    save_tokenizer(fit_tokenizer([str(root / "c.txt")], vocab_size=600, show_progress=False), str(root / "tok"))
    return AutoTokenizer.from_pretrained(str(root / "tok"))
