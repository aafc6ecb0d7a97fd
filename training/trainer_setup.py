"""Lightning Trainer set-up: TensorBoard, checkpoints, graceful stops and a training clock."""
import logging
import os
import signal
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from transformers import RobertaConfig

from training.devices import DevicePlan, peak_flops
from training.model import flops_per_token

log = logging.getLogger("training")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint under a temporary name and rename it: a crash mid-write never truncates last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        tmp = f"{path}.tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class StepCheckpoint(ModelCheckpoint):
    """last.ckpt every n optimizer steps; at a step that also validates, after the validation.

    Lightning treats a checkpoint written before a validation as if the validation had run, so a run
    killed during it would resume without it: a gap in the validation curve, at the default intervals
    (both 500) at every checkpoint. Written after it, a kill during validation resumes from the checkpoint
    before, and validates again.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        validates = trainer.enable_validation and isinstance(trainer.val_check_batch, int) and \
            (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % trainer.val_check_batch == 0  # as Lightning decides
        if not validates:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A step due for a checkpoint that has none yet: on_train_batch_end left it to this validation.
        if trainer.global_step % self._every_n_train_steps == 0 and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_validation_end(trainer, pl_module)


class GracefulStop(Callback):
    """On SIGTERM (preemption) or SIGINT, finish the current step, save last.ckpt and stop.

    Lightning's own SIGTERM handler tells the other ranks and raises SIGTERMException between steps;
    SIGINT gets a handler here so that Ctrl+C no longer aborts in the middle of a step.
    """

    def __init__(self, checkpoint_path: str) -> None:
        self.checkpoint_path = checkpoint_path
        self.received: int | None = None
        self._sigint = self._sigterm_held = False
        self._previous_sigint: Any = None
        self._last_step = -1

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._sigint:  # a second Ctrl+C: stop waiting for the step to end
            raise KeyboardInterrupt
        self._sigint = True
        log.warning("received SIGINT: saving a checkpoint after the current step (press again to abort)")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step

    def _save(self, trainer: pl.Trainer, signum: int) -> None:
        self.received = signum
        trainer.save_checkpoint(self.checkpoint_path)
        log.warning("checkpoint saved at step %d to %s", trainer.global_step, self.checkpoint_path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        if trainer.received_sigterm and not stepped:
            # mid-way through accumulating a step: hold Lightning's SIGTERM back until the optimizer has
            # stepped, so that the checkpoint never lacks gradients that its data position counts as done
            trainer._signal_connector.received_sigterm, self._sigterm_held = False, True
        if self._sigterm_held and stepped:
            trainer._signal_connector.received_sigterm = True  # Lightning raises after this hook
        if self._sigint and self.received is None and stepped:
            self._save(trainer, signal.SIGINT)
            trainer.should_stop = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning raises this between steps once SIGTERM has arrived, so the state is consistent here.
        if isinstance(exception, SIGTERMException) and self.received is None:
            self._save(trainer, signal.SIGTERM)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)


class TrainingClock(Callback):
    """Seconds spent in training steps (validation excluded), kept across resumes; stops the run when
    they reach `max_seconds` (--max-time). Every `log_every_n_steps` steps it writes the step's loss,
    accuracy and rate, tokens/s, and on GPUs the model FLOPs utilisation (MFU) at the masking rate
    measured over the interval, before that step's checkpoint, and flushes them with each checkpoint.

    `budget_seconds` is what the learning-rate schedule and the stop read: the live clock on one
    process; with several, rank 0's clock, broadcast every `sync_every_n_steps` optimizer steps, so that
    every rank sets the same rate and stops at the same step.
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

    @property
    def budget_seconds(self) -> float:
        return self.seconds if self._world_size == 1 else self._synced

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
            self._synced = trainer.strategy.broadcast(self.seconds, src=0)
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
            metrics["progress/tokens_seen"] = float(tokens * trainer.world_size)
            metrics["progress/train_seconds"] = now
            if self.peak_flops and self.config is not None:
                rate = (masked - masked_then) / (tokens - tokens_then)  # ~13.5% at 15%: special tokens never masked
                metrics["throughput/mfu"] = per_device * flops_per_token(self.config, self.seq_len, rate) / self.peak_flops
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
        self.peak_flops = peak_flops(trainer.strategy.root_device, str(trainer.precision), self.peak_tflops)

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

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.prior_seconds = self._synced = state_dict.get("seconds", 0.0)


def build_trainer(
    job_dir: str, plan: DevicePlan, max_steps: int | None, validate_every_n_steps: int, checkpoint_every_n_steps: int,
    accelerator: str = "auto", devices: str | int = "auto", strategy: str = "auto", num_nodes: int = 1,
    max_seconds: float | None = None, log_every_n_steps: int = 10, gradient_clip_val: float = 1.0,
    accumulate_grad_batches: int = 1,
    progress: bool = True, purge_step: int | None = None, config: RobertaConfig | None = None, seq_len: int = 128,
    peak_tflops: float | None = None, started: float | None = None, extra_callbacks: list[Callback] | None = None,
) -> tuple[pl.Trainer, TrainingClock, GracefulStop]:
    """A Lightning Trainer with the plan's precision; the module clips gradients itself (see
    MaskedLMModule.configure_gradient_clipping), Lightning passes it `gradient_clip_val`. `max_seconds`
    (--max-time) is kept by the TrainingClock, not Lightning's Timer: the schedule and the stop read the same seconds."""
    clock = TrainingClock(log_every_n_steps, config, seq_len, peak_tflops, started,
                          max_seconds, plan.check_every_n_steps)
    stopper = GracefulStop(os.path.join(job_dir, "checkpoints", "last.ckpt"))
    checkpoints = StepCheckpoint(
        dirpath=os.path.join(job_dir, "checkpoints"), filename="step-{step}", every_n_train_steps=checkpoint_every_n_steps,
        save_top_k=0, save_last=True,  # one rolling last.ckpt: enough to resume, no disk creep
    )
    callbacks = [checkpoints, clock, stopper, *(extra_callbacks or [])]
    if progress:  # each refresh reads the loss back from the device: on a GPU, not every step
        callbacks.append(TQDMProgressBar(refresh_rate=plan.check_every_n_steps))
    # On resume, purge_step tells TensorBoard to drop what the interrupted run logged after its checkpoint.
    logger = TensorBoardLogger(save_dir=job_dir, name="tensorboard", version="", default_hp_metric=False,
                               purge_step=purge_step)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        precision=plan.precision, max_steps=max_steps if max_steps else -1, accumulate_grad_batches=accumulate_grad_batches,
        max_epochs=-1, val_check_interval=validate_every_n_steps * accumulate_grad_batches,  # Lightning counts batches
        check_val_every_n_epoch=None,
        log_every_n_steps=log_every_n_steps, gradient_clip_val=gradient_clip_val or None,
        callbacks=callbacks, logger=logger, enable_progress_bar=progress,
        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=job_dir,
        plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,  # our sampler shards by rank and resumes
    )
    return trainer, clock, stopper
