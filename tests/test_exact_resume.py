"""Resume is exact to the bit, with workers and with DDP; DDP equals one device on the same samples."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from conftest import REPO, TINY_MODEL, scalars
from training.sequences import PackedBlocks
from training.token_cache import encode_split, text_files

def job_args(pipeline_run, job, *extra):
    corpus = pipeline_run["corpus"]
    return ["--job-dir", str(job), "--path-to-train-set", f"{corpus}/train", "--path-to-val-set",
            f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"], *TINY_MODEL,
            "--accelerator", "cpu", "--no-progress", "--precision", "32-true", "--dropout", "0.1",
            "--fill-mask-samples", "0", *extra]


def run(args, returncode=0, **interrupt):
    """Step 3 in its own process group (a kill spares pytest), interrupted as tests/interrupting_runner.py
    reads `interrupt` (KILL_AT_STEP=..., SIGNAL_AT_STEP=...), or not at all."""
    env = dict(os.environ, **{k: str(v) for k, v in interrupt.items()})
    result = subprocess.run([sys.executable, "tests/interrupting_runner.py", *args], cwd=REPO, capture_output=True,
                            text=True, env=env, start_new_session=True, timeout=300)
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def steps_per_epoch(pipeline_run, tmp_path, samples_per_step: int) -> int:
    tokenizer_file = os.path.join(pipeline_run["tokenizer"], "tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(pipeline_run["tokenizer"])
    split = encode_split(text_files(os.path.join(pipeline_run["corpus"], "train"), "train"), tokenizer_file,
                         str(tmp_path / "cache"), tokenizer.eos_token_id)
    return -(-len(PackedBlocks(split, 64, tokenizer.bos_token_id)) // samples_per_step)


def final_state(job) -> dict:
    return torch.load(os.path.join(job, "checkpoints", "last.ckpt"), weights_only=False)


def assert_identical(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["seen"] == b["seen"]  # tokens, samples, masked: counted on
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), f"{name} differs by {(tensor - b['state_dict'][name]).abs().max()}"
    moments = lambda s: [t for state in s["optimizer_states"][0]["state"].values() for t in state.values()]
    assert all(torch.equal(x, y) for x, y in zip(moments(a), moments(b)))


@pytest.mark.parametrize("extra, interrupt", [
    ([], "kill"), (["--accumulate-grad-batches", "2"], "kill"),
    (["--num-workers", "2"], dict(SIGNAL="SIGUSR1", SIGNAL_GROUP=1)),  # as srun signals: workers too
    (["--devices", "2", "--strategy", "ddp", "--batch-size", "8"], dict(SIGNAL="SIGTERM", SIGNAL_RANK=1)),
], ids=["one-process", "accumulating", "two-workers-signal-to-the-group", "two-process-ddp-signal-to-one-rank"])
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, pipeline_run, extra, interrupt):
    epoch = steps_per_epoch(pipeline_run, tmp_path, 32 if "--accumulate-grad-batches" in extra else 16)
    assert epoch >= 2
    every, steps = 3, 2 * epoch + 2
    stop_at = every * (epoch // every + 1)  # the first checkpoint after the first epoch's end: the stream goes on
    if interrupt != "kill":  # a signal: at a step that validates (every 4), which must not be lost
        stop_at = 4 * (epoch // 4 + 1)
    assert stop_at < steps
    common = ["--max-steps", str(steps), "--checkpoint-every-n-steps", str(every), "--validate-every-n-steps", "4",
              "--log-every-n-steps", "1", *extra]
    run(job_args(pipeline_run, tmp_path / "whole", *common))
    if interrupt == "kill":
        run(job_args(pipeline_run, tmp_path / "killed", *common), -9, KILL_AT_STEP=stop_at)
    else:  # sent as step stop_at begins (to rank 1 alone under DDP): every rank stops after it, none waits
        name = interrupt["SIGNAL"]
        stopped = run(job_args(pipeline_run, tmp_path / "killed", *common), 128 + getattr(signal, name),
                      SIGNAL_AT_STEP=stop_at - 1, **interrupt)
        assert f"stopped: by {name} at step {stop_at};" in stopped.stderr and "Traceback" not in stopped.stderr
        # saved as the validation began, not after it: the resumed run validates that step (the curves below)
        assert f"validation at step {stop_at} took" not in stopped.stderr, stopped.stderr[-3000:]
    assert final_state(tmp_path / "killed")["global_step"] == stop_at
    assert os.listdir(tmp_path / "killed" / "checkpoints") == ["last.ckpt"]
    resumed = run(job_args(pipeline_run, tmp_path / "killed", *common))
    assert "resuming from" in resumed.stderr
    assert_identical(final_state(tmp_path / "whole"), final_state(tmp_path / "killed"))
    whole, again = (json.load(open(tmp_path / j / "final_metrics.json")) for j in ("whole", "killed"))
    assert whole["val_loss"] == again["val_loss"] and whole["global_step"] == again["global_step"] == steps
    assert whole["train_tokens"] == again["train_tokens"]
    for tag in ("train/loss", "train/mlm_accuracy", "lr", "val/loss"):  # TensorBoard: the same curves, no gap
        assert scalars(tmp_path / "killed", tag) == scalars(tmp_path / "whole", tag), tag
