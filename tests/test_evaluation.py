"""Validation on a fixed sample, and run_evaluation.py reproducing it."""
import itertools
import json

import numpy as np

from conftest import TINY_MODEL, run_in_process, run_script
from training import run_evaluation
from training.sampler import TrainingStream


def count_lines(directory) -> int:
    import glob

    return sum(1 for f in glob.glob(f"{directory}/*.txt") for line in open(f) if line.strip())


def test_run_evaluation_reproduces_the_runs_validation(tmp_path, pipeline_run, capsys):
    corpus, job = pipeline_run["corpus"], tmp_path / "job"
    run_script("training/run_training.py", "--job-dir", str(job), "--path-to-train-set", f"{corpus}/train",
               "--path-to-val-set", f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"],
               *TINY_MODEL, "--max-steps", "8", "--max-val-sentences", "20", "--seed", "7", "--accelerator", "cpu",
               "--no-progress")
    run_loss = json.load(open(job / "final_metrics.json"))["val_loss"]

    def evaluate(*extra):  # in this process: the script's main, as run_evaluation.py calls it
        capsys.readouterr()
        run_evaluation.main(["--path-to-val-set", f"{corpus}/validation", "--seed", "7", "--max-seq-length", "64",
                             "--no-progress", *extra])
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    export = evaluate("--model-dir", str(job / "model"), "--max-val-sentences", "20")
    assert export["sentences"] == 20 and abs(export["loss"] - run_loss) < 1e-3, (export, run_loss)
    other_batch = evaluate("--model-dir", str(job / "model"), "--max-val-sentences", "20", "--batch-size", "7",
                           "--output", str(tmp_path / "eval.json"))
    assert abs(other_batch["loss"] - export["loss"]) < 1e-3 and other_batch["masked_tokens"] == export["masked_tokens"]
    assert json.load(open(tmp_path / "eval.json"))["loss"] == other_batch["loss"]
    from_checkpoint = evaluate("--checkpoint", str(job / "checkpoints" / "last.ckpt"), "--max-val-sentences", "20")
    assert abs(from_checkpoint["loss"] - run_loss) < 1e-3
    everything = evaluate("--model-dir", str(job / "model"), "--max-val-sentences", "0")
    assert everything["sentences"] == count_lines(f"{corpus}/validation") > 20


def test_run_evaluation_bad_input_is_one_line(tmp_path, pipeline_run):
    result = run_in_process("training/run_evaluation.py", "--model-dir", str(tmp_path), "--no-progress", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_in_process("training/run_evaluation.py", "--model-dir", f"{pipeline_run['job']}/model",
                            "--max-val-sentences", "-1", check=False)
    assert result.returncode == 2 and "--max-val-sentences" in result.stderr


def test_sampler_works_on_compact_arrays():
    n = 3_000_000  # one epoch's order is a numpy array yielded lazily, not a Python list
    it = iter(TrainingStream(n, seed=1))
    first = [next(it)[1] for _ in range(5)]
    assert all(isinstance(i, int) for i in first) and len(set(first)) == 5
    lengths = np.random.default_rng(0).integers(3, 60, size=n).astype(np.uint16)
    grouped = iter(TrainingStream(n, seed=1, lengths=lengths, group=64))
    order = np.fromiter((i for _, i in itertools.islice(grouped, n)), dtype=np.int64, count=n)
    assert np.array_equal(np.sort(order), np.arange(n))
    batches = order[: (n // 64) * 64].reshape(-1, 64)
    assert (lengths[batches].max(1) - lengths[batches].min(1)).mean() < 3
