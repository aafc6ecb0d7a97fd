"""Resume is exact to the bit, with workers and with DDP; DDP equals one device on the same samples."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from conftest import REPO, TINY_MODEL, scalars
from training.data import PackedBlocks, encode_split, text_files

# Runs step 3 like training/run_training.py, but kills every process of the run (all ranks) with
# SIGKILL right after the checkpoint of step KILL_AT is on disk: a crash at a known point.
KILLING_RUNNER = """
import os, signal, sys
from training import trainer_setup
from training.run_training import main

KILL_AT = int(os.environ["KILL_AT_STEP"])
save = trainer_setup.AtomicCheckpointIO.save_checkpoint

def save_then_die(self, checkpoint, path, storage_options=None):
    save(self, checkpoint, path, storage_options)
    if checkpoint["global_step"] == KILL_AT:
        os.killpg(0, signal.SIGKILL)

trainer_setup.AtomicCheckpointIO.save_checkpoint = save_then_die
main(sys.argv[1:])
"""


def job_args(pipeline_run, job, *extra):
    corpus = pipeline_run["corpus"]
    return ["--job-dir", str(job), "--path-to-train-set", f"{corpus}/train", "--path-to-val-set",
            f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"], *TINY_MODEL,
            "--accelerator", "cpu", "--no-progress", "--precision", "32-true", "--dropout", "0.1",
            "--fill-mask-samples", "0", *extra]


def run(args, kill_at=None, runner=None):
    script = [sys.executable, str(runner)] if kill_at else [sys.executable, "training/run_training.py"]
    env = dict(os.environ, KILL_AT_STEP=str(kill_at or 0))
    result = subprocess.run([*script, *args], cwd=REPO, capture_output=True, text=True, env=env,
                            start_new_session=True)  # its own process group: the kill spares pytest
    if kill_at:
        assert result.returncode == -9, result.stderr[-2000:]
    else:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def batches_per_epoch(pipeline_run, tmp_path, world: int = 1, batch: int = 16) -> int:
    tokenizer_file = os.path.join(pipeline_run["tokenizer"], "tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(pipeline_run["tokenizer"])
    split = encode_split(text_files(os.path.join(pipeline_run["corpus"], "train"), "train"), tokenizer_file,
                         str(tmp_path / "cache"), tokenizer.eos_token_id)
    per_rank = -(-len(PackedBlocks(split, 64, tokenizer.bos_token_id)) // world)
    return -(-per_rank // batch)


def final_state(job) -> dict:
    return torch.load(os.path.join(job, "checkpoints", "last.ckpt"), weights_only=False)


def assert_identical(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["seen"] == b["seen"]  # tokens, samples, masked: counted on
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), f"{name} differs by {(tensor - b['state_dict'][name]).abs().max()}"
    moments = lambda s: [t for state in s["optimizer_states"][0]["state"].values() for t in state.values()]
    assert all(torch.equal(x, y) for x, y in zip(moments(a), moments(b)))


@pytest.mark.parametrize("extra, where", [
    ([], "mid-epoch"), ([], "epoch-end"), (["--num-workers", "2"], "mid-epoch"),
    (["--devices", "2", "--strategy", "ddp", "--batch-size", "8"], "mid-epoch"),
    (["--accumulate-grad-batches", "2"], "mid-epoch"),
], ids=["one-process", "one-process-epoch-end", "two-workers", "two-process-ddp", "accumulating"])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, pipeline_run, extra, where):
    ddp = "ddp" in extra
    epoch = batches_per_epoch(pipeline_run, tmp_path, world=2 if ddp else 1, batch=8 if ddp else 16)
    if "--accumulate-grad-batches" in extra:  # optimizer steps per epoch (the last one may take fewer batches)
        epoch = -(-epoch // 2)
    assert epoch >= 2
    every, steps = (3 if epoch % 3 else 4, 2 * epoch + 2) if where == "mid-epoch" else (epoch, 3 * epoch - 1)
    kill_at = every * (epoch // every + 1)  # the first checkpoint after the first epoch's end
    assert kill_at < steps and (kill_at % epoch != 0) == (where == "mid-epoch"), (epoch, every, kill_at)
    common = ["--max-steps", str(steps), "--checkpoint-every-n-steps", str(every), "--validate-every-n-steps", "4",
              "--log-every-n-steps", "1", *extra]
    runner = tmp_path / "killing_runner.py"
    runner.write_text(KILLING_RUNNER)
    run(job_args(pipeline_run, tmp_path / "whole", *common))
    run(job_args(pipeline_run, tmp_path / "killed", *common), kill_at=kill_at, runner=runner)
    assert final_state(tmp_path / "killed")["global_step"] == kill_at
    resumed = run(job_args(pipeline_run, tmp_path / "killed", *common))
    assert "resuming from" in resumed.stderr
    assert_identical(final_state(tmp_path / "whole"), final_state(tmp_path / "killed"))
    whole, again = (json.load(open(tmp_path / j / "final_metrics.json")) for j in ("whole", "killed"))
    assert whole["val_loss"] == again["val_loss"] and whole["global_step"] == again["global_step"] == steps
    for tag in ("train/loss", "train/mlm_accuracy", "lr", "val/loss"):  # TensorBoard: the same curves, no gap
        assert scalars(tmp_path / "killed", tag) == scalars(tmp_path / "whole", tag), tag


def test_two_process_ddp_equals_one_device_on_the_same_samples(tmp_path, pipeline_run, monkeypatch):
    # Fewer steps than an epoch: no rank pads its share with repeated samples.
    common = ["--max-steps", "3", "--validate-every-n-steps", "3", "--dropout", "0", "--lr", "2e-3",
              "--accumulate-grad-batches", "1"]
    run(job_args(pipeline_run, tmp_path / "one", *common, "--batch-size", "16", "--devices", "1"))
    run(job_args(pipeline_run, tmp_path / "ddp", *common, "--batch-size", "8", "--devices", "2", "--strategy", "ddp"))
    one, ddp = (json.load(open(tmp_path / j / "final_metrics.json")) for j in ("one", "ddp"))
    assert one["train_tokens"] == ddp["train_tokens"], "the ranks shared the samples of one device's batches"
    assert abs(one["val_loss"] - ddp["val_loss"]) < 1e-4, (one, ddp)
    a, b = final_state(tmp_path / "one")["state_dict"], final_state(tmp_path / "ddp")["state_dict"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_accumulation_under_ddp_equals_one_device_with_the_whole_batch(tmp_path, pipeline_run):
    common = ["--max-steps", "2", "--validate-every-n-steps", "2", "--dropout", "0", "--lr", "2e-3"]
    run(job_args(pipeline_run, tmp_path / "one", *common, "--batch-size", "16", "--devices", "1"))
    run(job_args(pipeline_run, tmp_path / "acc", *common, "--batch-size", "4", "--accumulate-grad-batches", "2",
                 "--devices", "2", "--strategy", "ddp"))
    one, acc = (json.load(open(tmp_path / j / "final_metrics.json")) for j in ("one", "acc"))
    assert abs(one["val_loss"] - acc["val_loss"]) < 1e-4, (one, acc)
    card = open(tmp_path / "acc" / "model" / "README.md").read()
    assert "- effective_batch_size: 16" in card
