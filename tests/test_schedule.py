"""The learning-rate schedule over a budget of steps or training time, and gradient accumulation."""
import json
import math
import signal

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from conftest import run_script, scalars
from test_reliability import start_training, train_args, wait_for
from training.config import TrainingConfig, step_budget
from training.masking import MaskedLMCollator
from training.model import MaskedLMModule, masked_lm_loss
from training.schedule import WARMUP_CAP, Schedule

PEAK = 2e-3


def test_without_max_time_the_schedule_follows_the_steps_as_transformers_does():
    cfg = TrainingConfig(job_dir="j", train_path="t", val_path="v")
    assert step_budget(cfg) == 1000
    assert step_budget(TrainingConfig(job_dir="j", train_path="t", val_path="v", max_time="60")) is None
    schedule = Schedule("linear", max_steps=1000, warmup_ratio=0.06)
    reference = get_linear_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1.0), 60, 1000).lr_lambdas[0]
    for step in range(0, 1001, 7):
        # seconds are ignored without a time budget
        assert schedule.factor(step, seconds=1e9) == pytest.approx(reference(step), abs=1e-12), step


def test_time_budget_drives_warmup_and_decay():
    linear = Schedule("linear", max_steps=None, max_seconds=100, warmup_ratio=0.06)
    assert linear.factor(2, 3.0) == pytest.approx(0.5)  # halfway through a warmup of 6 s
    assert linear.factor(5, 6.0) == pytest.approx(1.0)
    assert linear.factor(500, 53.0) == pytest.approx(0.5)  # halfway from 6 s to 100 s
    assert linear.factor(900, 100.0) == 0.0 and linear.factor(900, 120.0) == 0.0
    both = Schedule("linear", max_steps=1000, max_seconds=100, warmup_ratio=0.06)
    assert both.factor(530, 1.0) == pytest.approx(0.5)  # steps further along than time
    assert both.factor(10, 53.0) == pytest.approx(0.5)  # time further along than steps
    wsd = Schedule("wsd", max_seconds=100, warmup_ratio=0.06, decay_ratio=0.2)
    assert wsd.factor(100, 50.0) == 1.0 and wsd.factor(100, 79.0) == 1.0
    assert wsd.factor(100, 90.0) == pytest.approx(0.5) and wsd.factor(100, 100.0) == 0.0
    cosine = Schedule("cosine", max_seconds=100, warmup_ratio=0.0)
    assert cosine.factor(0, 50.0) == pytest.approx(0.5) and cosine.factor(0, 25.0) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4)))
    assert Schedule("constant", max_seconds=100, warmup_ratio=0.1).factor(10, 99.0) == 1.0


def test_warmup_steps_are_capped_by_the_budget():
    schedule = Schedule("constant", max_steps=None, max_seconds=100, warmup_steps=1_000_000)
    assert schedule.factor(10, 100 * WARMUP_CAP / 2) == pytest.approx(0.5)
    assert schedule.factor(10, 100 * WARMUP_CAP) == 1.0  # the cap ends warmup, however many steps were asked
    short = Schedule("linear", max_steps=1000, warmup_steps=20)
    assert short.factor(10, 0) == pytest.approx(0.5) and short.factor(20, 0) == pytest.approx(0.98)


def test_max_time_run_warms_up_early_and_ends_its_decay(tmp_path, pipeline_run):
    job = tmp_path / "job"
    run_script("training/run_training.py", *train_args(pipeline_run, job, "--max-time", "8", "--lr", str(PEAK),
                                                       "--validate-every-n-steps", "100000"))
    metrics = json.load(open(job / "final_metrics.json"))
    assert 8 <= metrics["train_seconds"] < 10, metrics
    curve = scalars(job, "lr")
    steps = metrics["global_step"]
    peak_step = next(step for step, lr in curve if lr > 0.9 * PEAK)
    assert peak_step <= 0.1 * steps, (peak_step, steps)  # warmup: 6% of the time
    assert curve[-1][1] < 0.05 * PEAK, curve[-5:]  # the decay reached its end with the budget


def test_killed_budgeted_run_resumes_to_the_same_total_budget(tmp_path, pipeline_run):
    job = tmp_path / "job"
    args = train_args(pipeline_run, job, "--max-time", "10", "--lr", str(PEAK), "--checkpoint-every-n-steps", "10",
                      "--lr-schedule", "linear", "--warmup-ratio", "0",  # falls from the first step: easy to follow
                      "--validate-every-n-steps", "100000")
    proc = start_training(args)
    wait_for(job / "checkpoints" / "last.ckpt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoint = torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)
    spent = next(v["seconds"] for k, v in checkpoint["callbacks"].items() if "TrainingClock" in k)
    killed_at = checkpoint["global_step"]
    killed_lr = checkpoint["lr_schedulers"][0]["_last_lr"][0]
    assert 0 < spent < 10 and killed_at > 0
    run_script("training/run_training.py", *args)
    metrics = json.load(open(job / "final_metrics.json"))
    assert 10 <= metrics["train_seconds"] < 12 and metrics["global_step"] > killed_at, metrics
    curve = scalars(job, "lr")
    resumed = [lr for step, lr in curve if step > killed_at]
    assert resumed[0] <= killed_lr + 1e-9, "the schedule went on from where it stopped"
    assert curve[-1][1] < 0.05 * PEAK
    seconds = [value for step, value in scalars(job, "progress/train_seconds") if step > killed_at]
    assert seconds[0] > spent, "the clock went on from the checkpoint's seconds"


def tiny_module(tokenizer, **kw):
    torch.manual_seed(0)
    return MaskedLMModule(len(tokenizer), "tiny", hidden_size=32, num_layers=2, num_heads=2, lr=1e-3,
                          warmup_ratio=0.0, max_steps=10, attention="eager", dropout=0.0, **kw)


def one_update(tokenizer, batches, accumulate):
    """Gradients and weights after one optimizer step of Lightning over `batches` (float32, no clipping)."""
    module = tiny_module(tokenizer)
    grads = {}

    class KeepGradients(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 1 and not grads:
                grads.update({n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.grad is not None})

    trainer = pl.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, precision="32-true",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[KeepGradients()])
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return grads, {n: p.detach().clone() for n, p in module.model.named_parameters()}


def test_accumulating_k_batches_of_b_equals_one_batch_of_k_times_b(tokenizer):
    sequences = [torch.tensor(tokenizer(f"baby bottle {i} soft blanket " * (1 + i % 4))["input_ids"]) for i in range(12)]
    whole = MaskedLMCollator(tokenizer, 0.3, seed=5)(sequences)
    parts = [{k: v[i : i + 4] if isinstance(v, torch.Tensor) else v for k, v in whole.items()} for i in (0, 4, 8)]
    for part in parts:
        counts = (part["labels"] != -100).sum(1)
        part.update(masked_most=int(counts.max()), masked_total=int(counts.sum()))
    assert len({p["masked_total"] for p in parts}) > 1  # unequal label counts: a mean of means would differ
    grads_one, weights_one = one_update(tokenizer, [whole], accumulate=1)
    grads_k, weights_k = one_update(tokenizer, parts, accumulate=3)
    # the reference: autograd of the mean loss over every masked token of the 12 sequences
    reference = tiny_module(tokenizer).model
    loss, _, _ = masked_lm_loss(reference, whole["input_ids"], whole["attention_mask"], whole["labels"])
    loss.backward()
    for name, p in reference.named_parameters():
        if p.grad is None:
            continue
        assert torch.allclose(grads_one[name], p.grad, rtol=1e-4, atol=1e-7), name
        assert torch.allclose(grads_k[name], p.grad, rtol=1e-4, atol=1e-7), name
        assert torch.allclose(weights_k[name], weights_one[name], rtol=0, atol=1e-6), name


def test_accumulating_runs_validate_and_checkpoint_every_n_optimizer_steps(tmp_path, pipeline_run):
    job = tmp_path / "job"
    run_script("training/run_training.py", *train_args(pipeline_run, job, "--accumulate-grad-batches", "2",
                                                       "--max-steps", "6", "--validate-every-n-steps", "3"))
    # after steps 3 and 6 (labelled by step index, as the training curves): not after 3 and 6 batches
    assert [step for step, _ in scalars(job, "val/loss")] == [2, 5]


def test_several_processes_stop_at_the_step_one_process_stops_at(monkeypatch):
    """--max-time under DDP: rank 0's clock is broadcast every 10 steps; in between it is carried forward at the
    broadcast seconds a step, so the ranks stop together at the step one process would (not up to 9 later)."""
    from types import SimpleNamespace

    import torch

    from training import trainer_setup
    from training.trainer_setup import TrainingClock

    def stop_step(world_size: int, first_step: float = 1.0, max_seconds: float = 25.5) -> tuple[int, float]:
        now = [0.0]
        monkeypatch.setattr(trainer_setup.time, "perf_counter", lambda: now[0])
        clock = TrainingClock(log_every_n_steps=10_000, max_seconds=max_seconds, sync_every_n_steps=10)
        strategy = SimpleNamespace(broadcast=lambda value, src: value, root_device=torch.device("cpu"))
        trainer = SimpleNamespace(world_size=world_size, global_step=0, should_stop=False, is_global_zero=True,
                                  strategy=strategy, precision="32-true")
        module = SimpleNamespace(seen=torch.zeros(3))
        clock.on_train_start(trainer, module)
        budgets = []
        while not trainer.should_stop:
            clock.on_train_batch_start(trainer, module, None, trainer.global_step)
            now[0] += first_step if trainer.global_step == 0 else 1.0 + 0.01 * (trainer.global_step % 3)
            trainer.global_step += 1
            clock.on_train_batch_end(trainer, module, None, None, trainer.global_step)
            budgets.append(clock.budget_seconds)
        assert budgets == sorted(budgets), "the schedule's clock went back"
        assert clock.state_dict()["seconds"] >= max_seconds  # a run resumed after the stop does not train on
        return trainer.global_step

    assert stop_step(2) == stop_step(1) == 26
    # a first step that carries start-up (40 s: compiling, the first kernels) is not carried forward
    assert stop_step(2, first_step=40.0, max_seconds=60.0) == stop_step(1, first_step=40.0, max_seconds=60.0) == 21
