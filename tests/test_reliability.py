import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY_MODEL, run_script, scalars
from training.data import ResumableSampler


def test_resumed_sampler_continues_the_epoch_in_the_same_order():
    full = list(ResumableSampler(100, seed=3, epoch=2))
    assert sorted(full) == list(range(100)) and full != list(range(100))
    assert list(ResumableSampler(100, seed=3, epoch=2, skip=40)) == full[40:]
    assert list(ResumableSampler(100, seed=3, epoch=3)) != full  # a new epoch, a new order
    resumed = ResumableSampler(100, seed=3, epoch=2, skip=40, with_epoch=True)
    assert list(resumed) == [(2, i) for i in full[40:]]
    resumed.set_epoch(3)  # only the first epoch after a resume is shortened
    assert list(resumed) == [(3, i) for i in ResumableSampler(100, seed=3, epoch=3)]
    shares = [list(ResumableSampler(101, seed=3, rank=r, world_size=4)) for r in range(4)]
    assert all(len(s) == 26 for s in shares) and set().union(*shares) == set(range(101))
    val = [list(ResumableSampler(101, 0, r, 4, shuffle=False)) for r in range(4)]
    assert sorted(sum(val, [])) == list(range(101))  # validation: disjoint, nothing counted twice


def train_args(pipeline_run, job, *extra):
    corpus = pipeline_run["corpus"]
    return ["--job-dir", str(job), "--path-to-train-set", f"{corpus}/train", "--path-to-val-set",
            f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"], *TINY_MODEL,
            "--accelerator", "cpu", "--no-progress", "--log-every-n-steps", "1", *extra]


def start_training(args):
    return subprocess.Popen([sys.executable, "training/run_training.py", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.001)  # kill as soon as it appears: the window a lost log point would fall in


def test_killed_run_resumes_and_reaches_max_steps(tmp_path, pipeline_run):
    job = tmp_path / "job"
    args = train_args(pipeline_run, job, "--max-steps", "60", "--checkpoint-every-n-steps", "8",
                      "--validate-every-n-steps", "15")
    proc = start_training(args)
    wait_for(job / "checkpoints" / "last.ckpt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 8 <= killed_at < 60
    result = run_script("training/run_training.py", *args)
    assert "resuming from" in result.stderr
    assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60
    steps = [step for step, _ in scalars(job, "train/loss")]  # without those a crash orphaned
    assert steps == list(range(steps[0], steps[0] + len(steps))) and len(steps) == 60, steps
    metrics = run_script("training/export_model.py", "--checkpoint", str(job / "checkpoints" / "last.ckpt"),
                         "--output-dir", str(tmp_path / "exported"))
    assert "step 60" in metrics.stderr and (tmp_path / "exported" / "model.safetensors").is_file()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_at_the_current_step(tmp_path, pipeline_run, signum):
    job = tmp_path / "job"
    proc = start_training(train_args(pipeline_run, job, "--max-steps", "10000", "--checkpoint-every-n-steps", "5",
                                     "--validate-every-n-steps", "10000"))
    wait_for(job / "checkpoints" / "last.ckpt")
    time.sleep(1.5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr and "run the same command again to resume" in stderr
    step = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert f"at step {step};" in stderr and step > 5


def test_diverging_run_stops_with_a_clear_message(tmp_path, pipeline_run):
    result = run_script("training/run_training.py", *train_args(pipeline_run, tmp_path / "job", "--lr", "1e30",
                        "--max-steps", "40", "--max-bad-steps", "3", "--gradient-clip-val", "0"), check=False)
    assert result.returncode == 1 and "lower --lr" in result.stderr and "Traceback" not in result.stderr


def test_two_process_ddp_matches_one_device_with_twice_the_batch(tmp_path, pipeline_run):
    import json

    def train(job, *extra):
        run_script("training/run_training.py", *train_args(pipeline_run, job, "--max-steps", "20",
                   "--validate-every-n-steps", "20", "--lr", "2e-3", "--log-every-n-steps", "5", *extra))
        return json.load(open(job / "final_metrics.json"))

    single = train(tmp_path / "one", "--devices", "1", "--batch-size", "16")
    ddp = train(tmp_path / "ddp", "--devices", "2", "--strategy", "ddp", "--batch-size", "8")
    assert single["global_step"] == ddp["global_step"] == 20
    assert abs(single["val_loss"] - ddp["val_loss"]) < 0.25, (single, ddp)
    assert abs(ddp["train_tokens"] - single["train_tokens"]) < 0.05 * single["train_tokens"]
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()


def test_length_grouped_batches_keep_the_resume_contract():
    import numpy as np

    lengths = np.random.default_rng(0).integers(3, 120, size=1000)
    sampler = lambda **kw: ResumableSampler(1000, seed=5, epoch=1, lengths=lengths, batch_size=32, **kw)
    full = list(sampler())
    assert sorted(full) == list(range(1000))
    batches = [full[i : i + 32] for i in range(0, 1000, 32)]
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 10  # similar lengths within a batch (random batches would spread over ~110)
    assert list(sampler(skip=320)) == full[320:]


def test_max_time_stops_cleanly_then_validates_and_exports(tmp_path, pipeline_run):
    import json

    job = tmp_path / "job"
    run_script("training/run_training.py", *train_args(pipeline_run, job, "--max-steps", "100000", "--max-time", "6",
                                                       "--validate-every-n-steps", "100000", "--no-packing"))
    metrics = json.load(open(job / "final_metrics.json"))
    assert 0 < metrics["global_step"] < 100000 and metrics["train_seconds"] < 30
    assert (job / "model" / "model.safetensors").is_file() and metrics["val_loss"] > 0
    events = EventAccumulator(os.path.join(job, "tensorboard"))
    events.Reload()
    assert {"throughput/tokens_per_sec", "throughput/samples_per_sec"} <= set(events.Tags()["scalars"])
