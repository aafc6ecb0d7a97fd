"""Lightning Trainer set-up: TensorBoard, the checkpoint a resume reads, stops on signals and a training clock."""
import logging
import os
import signal
import threading
import time
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from pytorch_lightning.callbacks import Callback, Checkpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from transformers import RobertaConfig

from common import UsageError, replace_durably
from training.devices import DevicePlan, peak_flops
from training.model import flops_per_token

log = logging.getLogger("training")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint under a temporary name and rename it durably (see replace_durably): neither a crash
    mid-write nor a lost machine leaves last.ckpt truncated or empty."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        tmp = f"{path}.tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        replace_durably(tmp, path)


class StopRequested(Exception):
    """Every rank agreed to stop on a signal and the checkpoint is written (see LastCheckpoint)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)  # preemption, Ctrl+C, SLURM's --signal=USR1@...


class StopSignals:
    """While training (a `with` block around Trainer.fit), SIGTERM, SIGINT and SIGUSR1 only set a flag,
    which LastCheckpoint acts on between optimizer steps; a second Ctrl+C aborts at once. Outside it the
    process's own handlers apply (a signal during the final validation or export ends the process, and
    the rerun finishes them)."""

    def __init__(self) -> None:
        self.received: int | None = None  # the signal this process got
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:  # a second Ctrl+C: stop waiting for the step
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: saving a checkpoint at the next step%s", signal.Signals(signum).name,
                    " (press Ctrl+C again to abort)" if signum == signal.SIGINT else "", extra={"each_rank": True})


class LastCheckpoint(Checkpoint):
    """JOB/checkpoints/last.ckpt, the one file a resume reads, always under that name: every
    `every_n_steps` optimizer steps, and when a stop signal (see StopSignals) reaches any rank.

    A step that also validates is saved after the validation: Lightning treats a checkpoint written
    before a validation as if the validation had run, so a run killed during it would resume without it.
    A stop signal at such a step does not wait for the whole validation (minutes, at 10,000 sentences, with
    a 30-s preemption notice): the checkpoint is written as the validation's first step runs, which
    Lightning records as a validation under way, so the resumed run runs it again, whole, before training
    on (`stop_before_validating`). At each optimizer-step boundary that is a multiple of `check_every_n_steps`, the
    ranks agree on the stop flag (one all-reduce), so that all of them save at the same step and stop,
    and no rank waits in a collective for the others. A Checkpoint subclass, so Lightning runs it after
    the other callbacks (the clock logs the step first).
    """

    def __init__(self, path: str, every_n_steps: int, validate_every_n_steps: int, check_every_n_steps: int = 1,
                 signals: StopSignals | None = None, resume_from: str | None = None) -> None:
        self.path, self.every_n_steps, self.validate_every_n_steps = path, every_n_steps, validate_every_n_steps
        self.check_every_n_steps, self.resume_from = check_every_n_steps, resume_from
        self.signals = signals or StopSignals()
        self._saved_step = self._last_step = -1
        self._stop_at_validation = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Every rank resumes from what it found on disk; rank 0 prepared the job directory. They must agree.
        if trainer.world_size > 1:
            rank_0 = trainer.strategy.broadcast(self.resume_from, src=0)
            if trainer.strategy.reduce_boolean_decision(rank_0 != self.resume_from, all=False):
                raise UsageError(f"the ranks disagree on the checkpoint to resume from (rank 0: {rank_0 or 'none'}); "
                                 "put --job-dir on a filesystem shared by all nodes")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_step = self._last_step = trainer.global_step

    def save(self, trainer: pl.Trainer) -> None:
        """Write last.ckpt unless it already holds this step; on every rank (rank 0 writes, all sum counts)."""
        if trainer.global_step != self._saved_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_step = trainer.global_step

    def _stop_signal(self, trainer: pl.Trainer) -> int:
        """The signal that any rank received (0: none); the same on every rank."""
        received = self.signals.received or 0
        if trainer.world_size == 1:
            return received
        flag = torch.tensor(float(received), device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def _stop(self, trainer: pl.Trainer, signum: int) -> None:
        self.save(trainer)
        log.warning("checkpoint saved at step %d to %s", trainer.global_step, self.path)
        raise StopRequested(signum)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        stepped, self._last_step = step != self._last_step, step
        if not stepped:  # mid-way through accumulating: a checkpoint never lacks gradients its data counts as done
            return
        validates = step % self.validate_every_n_steps == 0 or trainer.should_stop  # Lightning validates on a stop
        # checked before every validation too (the same steps on every rank), or a signal would wait for a whole one
        signum = self._stop_signal(trainer) if step % self.check_every_n_steps == 0 or validates else 0
        if signum and validates:
            self._stop_at_validation = signum  # saved and stopped as the validation's first step runs
        elif signum:
            self._stop(trainer, signum)
        elif step % self.every_n_steps == 0 and not validates:
            self.save(trainer)

    def stop_before_validating(self, trainer: pl.Trainer, batch_idx: int) -> None:
        """Called by the module's validation_step: with a stop pending, save and stop at the first batch (after
        Lightning counts it as started, so the checkpoint records a validation under way), on every rank."""
        if self._stop_at_validation and batch_idx == 0 and trainer.state.fn == "fit":
            self._stop(trainer, self._stop_at_validation)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        if trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)


class TrainingClock(Callback):
    """Seconds spent in training steps (validation excluded), kept across resumes; stops the run when
    they reach `max_seconds` (--max-time). Every `log_every_n_steps` steps it writes the step's loss,
    accuracy and rate, tokens/s, and (on GPUs and x86 CPUs) the model FLOPs utilisation (MFU) at the masking rate
    measured over the interval, before that step's checkpoint, and flushes them with each checkpoint.

    `budget_seconds` is what the learning-rate schedule and the stop read: the live clock on one
    process; with several, rank 0's clock and its seconds a step, broadcast every `sync_every_n_steps`
    optimizer steps and carried forward a step at a time in between, so that every rank sets the same rate
    and stops at the same step, the one a single process would stop at (give or take the rate's drift).
    """

    def __init__(self, log_every_n_steps: int, config: RobertaConfig | None = None, seq_len: int = 128,
                 peak_tflops: float | None = None, started: float | None = None, max_seconds: float | None = None,
                 sync_every_n_steps: int = 1) -> None:
        self.started = started if started is not None else time.perf_counter()  # the run's start, for the log
        self._first_step_logged = False
        self._validation_started: float | None = None
        self.log_every_n_steps = log_every_n_steps
        self.config, self.seq_len, self.peak_tflops = config, seq_len, peak_tflops
        self.peak_flops: float | None = None
        self.prior_seconds = 0.0
        self._running_since: float | None = None
        self._session_seconds = 0.0
        self._last_log: tuple[float, int, int, int] | None = None
        self.max_seconds, self.sync_every_n_steps = max_seconds, sync_every_n_steps
        self._world_size, self._synced, self._last_step = 1, 0.0, -1
        self._synced_step, self._step_seconds = 0, 0.0
        self._rate_from: tuple[float, int | None] = (0.0, None)  # (seconds, step) the next rate is measured from

    @property
    def budget_seconds(self) -> float:
        if self._world_size == 1:
            return self.seconds
        return self._synced + self._step_seconds * max(0, self._last_step - self._synced_step)

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._running_since if self._running_since is not None else 0.0
        return self.prior_seconds + self._session_seconds + running

    def _pause(self) -> None:
        if self._running_since is not None:
            self._session_seconds += time.perf_counter() - self._running_since
            self._running_since = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._running_since is None:
            self._running_since = time.perf_counter()
        if self._last_log is None:
            self._last_log = self._counters(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        if stepped and self._world_size > 1 and trainer.global_step % self.sync_every_n_steps == 0:
            # The rate of the last interval, none for the first after a (re)start: its first step carries start-up
            # (compiling, the device's first kernels), which carried forward would end the run early.
            now, (then, step_then) = self.seconds, self._rate_from
            rate = (now - then) / (trainer.global_step - step_then) if step_then is not None else 0.0
            self._rate_from = (now, trainer.global_step)
            now, rate = trainer.strategy.broadcast((now, rate), src=0)  # rank 0's, on every rank
            self._synced = max(now, self.budget_seconds)  # never back: the schedule reads it every step
            self._step_seconds, self._synced_step = rate, trainer.global_step
        if stepped and self.max_seconds is not None and self.budget_seconds >= self.max_seconds:
            if not trainer.should_stop and trainer.is_global_zero:
                log.info("--max-time: %.0f s of training reached at step %d", self.max_seconds, trainer.global_step)
            trainer.should_stop = True
        if not self._first_step_logged and trainer.is_global_zero:
            self._first_step_logged = True
            log.info("first optimizer step done %.1f s after start", time.perf_counter() - self.started)
        if not stepped or trainer.global_step % self.log_every_n_steps:
            return
        metrics = pl_module.step_log()
        now, tokens, samples, masked = current = self._counters(pl_module)
        if self._last_log is not None and now > self._last_log[0] and tokens > self._last_log[1]:
            then, tokens_then, samples_then, masked_then = self._last_log
            per_device = (tokens - tokens_then) / (now - then)
            # Non-pad tokens, all ranks (they run in lockstep, so rank 0's rate times the world size).
            metrics["throughput/tokens_per_sec"] = per_device * trainer.world_size
            metrics["throughput/samples_per_sec"] = (samples - samples_then) / (now - then) * trainer.world_size
            # For plots against tokens seen and training time (training/plot_learning_curves.py).
            metrics["progress/tokens_seen"] = float(pl_module.seen_before[0] + tokens * trainer.world_size)
            metrics["progress/train_seconds"] = now
            mfu = self._mfu(tokens - tokens_then, masked - masked_then, now - then)
            if mfu is not None:
                metrics["throughput/mfu"] = mfu
            pl_module.log("throughput/tokens_per_sec", metrics["throughput/tokens_per_sec"], prog_bar=True, logger=False)
        self._last_log = current
        # Written here, not through self.log: Lightning hands a step's logged values to the logger only after
        # on_train_batch_end, where the checkpoint of that step is saved; a run killed in between would resume
        # with that step missing from TensorBoard. The label is Lightning's (the step's index, as validation's).
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step - 1)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:  # what the checkpoint counts as done is on disk in TensorBoard too
            logger.save()

    def _counters(self, pl_module: pl.LightningModule) -> tuple[float, int, int, int]:
        """(seconds, tokens, samples, masked tokens), read back from the device in one transfer."""
        tokens, samples, masked = pl_module.seen.tolist()
        return self.seconds, tokens, samples, masked

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._world_size, self._synced, self._last_step = trainer.world_size, self.prior_seconds, trainer.global_step
        self._synced_step, self._step_seconds = trainer.global_step, 0.0
        self._rate_from = (self.prior_seconds, None)
        if self.max_seconds is not None and self.prior_seconds >= self.max_seconds:
            trainer.should_stop = True  # resumed after the budget was spent (killed in the final validation)
        device = trainer.strategy.root_device
        peak = peak_flops(device, str(trainer.precision), self.peak_tflops)
        self.peak_flops = peak[0] if peak else None
        if peak and trainer.is_global_zero:
            log.info("MFU against a peak of %.0f GFLOP/s (%s%s)", peak[0] / 1e9, peak[1],
                     "" if self.peak_tflops else "; --peak-tflops overrides")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()
        self._last_log = None
        self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_started is not None and trainer.is_global_zero:
            log.info("validation at step %d took %.1f s", trainer.global_step,
                     time.perf_counter() - self._validation_started)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    @property
    def session_seconds(self) -> float:
        """Training seconds of this process (a resumed run's earlier sessions excluded)."""
        return self.seconds - self.prior_seconds

    def session_mfu(self, pl_module: pl.LightningModule) -> float | None:
        """This process's model FLOPs utilisation over its training seconds (validation excluded); None
        where the peak is unknown."""
        tokens, _, masked = pl_module.seen.tolist()
        return self._mfu(tokens, masked, self.session_seconds)

    def _mfu(self, tokens: int, masked: int, seconds: float) -> float | None:
        """Model FLOPs utilisation of `tokens` non-pad tokens (`masked` of them labelled) trained by this rank in
        `seconds`; None where the peak is unknown."""
        if not self.peak_flops or self.config is None or seconds <= 0 or not tokens:
            return None
        rate = masked / tokens  # ~13.5% at 15%: special tokens are never masked
        return tokens / seconds * flops_per_token(self.config, self.seq_len, rate) / self.peak_flops

    def state_dict(self) -> dict[str, float]:
        # with several processes, the clock that decided the stop: a run resumed after it must not train on
        return {"seconds": max(self.seconds, self.budget_seconds)}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.prior_seconds = self._synced = state_dict.get("seconds", 0.0)


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, counting towards --max-steps: the training stream has no epochs to count."""

    @property
    def total_train_batches(self) -> int | float:
        steps = self.trainer.max_steps
        return steps * self.trainer.accumulate_grad_batches if steps > 0 else float("inf")


def tensorboard_logger(job_dir: str, purge_step: int | None = None) -> TensorBoardLogger:
    """JOB/tensorboard; on resume, `purge_step` drops what the interrupted run logged after its checkpoint."""
    return TensorBoardLogger(save_dir=job_dir, name="tensorboard", version="", default_hp_metric=False,
                             purge_step=purge_step)


def build_trainer(
    job_dir: str, plan: DevicePlan, max_steps: int | None, validate_every_n_steps: int, checkpoint_every_n_steps: int,
    accelerator: str = "auto", devices: str | int = "auto", strategy: str = "auto", num_nodes: int = 1,
    max_seconds: float | None = None, log_every_n_steps: int = 10, gradient_clip_val: float = 1.0,
    accumulate_grad_batches: int = 1, progress: bool = True, config: RobertaConfig | None = None, seq_len: int = 128,
    peak_tflops: float | None = None, started: float | None = None, extra_callbacks: list[Callback] | None = None,
    signals: StopSignals | None = None,
) -> tuple[pl.Trainer, TrainingClock, LastCheckpoint]:
    """A Lightning Trainer with the plan's precision and no logger yet (the caller adds `tensorboard_logger`
    once it knows where the run resumes); the module clips gradients itself (see
    MaskedLMModule.configure_gradient_clipping), Lightning passes it `gradient_clip_val`. `max_seconds`
    (--max-time) is kept by the TrainingClock, not Lightning's Timer: the schedule and the stop read the same
    seconds. Built before anything is written, so that `trainer.global_rank` tells which process prepares the job."""
    clock = TrainingClock(log_every_n_steps, config, seq_len, peak_tflops, started,
                          max_seconds, plan.check_every_n_steps)
    checkpoint = LastCheckpoint(os.path.join(job_dir, "checkpoints", "last.ckpt"), checkpoint_every_n_steps,
                                validate_every_n_steps, plan.check_every_n_steps, signals)
    callbacks = [clock, checkpoint, *(extra_callbacks or [])]
    if progress:  # each refresh reads the loss back from the device: on a GPU, not every step
        callbacks.append(StepProgressBar(refresh_rate=plan.check_every_n_steps))
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect():  # as Lightning picks (srun torchrun)
        plugins.append(SLURMEnvironment(auto_requeue=False))  # its requeue handler saves in the handler, on one rank
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        precision=plan.precision, max_steps=max_steps if max_steps else -1, accumulate_grad_batches=accumulate_grad_batches,
        max_epochs=-1, val_check_interval=validate_every_n_steps * accumulate_grad_batches,  # Lightning counts batches
        check_val_every_n_epoch=None,
        log_every_n_steps=log_every_n_steps, gradient_clip_val=gradient_clip_val or None,
        callbacks=callbacks, logger=False, enable_progress_bar=progress,  # LastCheckpoint replaces the default
        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=job_dir,
        plugins=plugins, use_distributed_sampler=False,  # our sampler shards by rank and resumes
    )
    # Lightning's SIGTERM handler (registered inside fit) stops only the rank that got the signal, after a
    # broadcast made inside the handler on that rank alone: StopSignals handles every stop signal instead.
    # The one use of a Lightning internal here; tests/test_exact_resume.py signals a rank in that window.
    trainer._signal_connector.register_signal_handlers = lambda: None
    return trainer, clock, checkpoint
