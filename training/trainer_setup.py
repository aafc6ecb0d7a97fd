"""Lightning Trainer set-up: precision choice, TensorBoard, checkpoints and a training clock."""
import logging
import os
import signal
import time
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger("training")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint under a temporary name and rename it: a crash mid-write never truncates last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        tmp = f"{path}.tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class GracefulStop(Callback):
    """On SIGTERM (preemption) or SIGINT, finish the current step, save last.ckpt and stop.

    Lightning's own SIGTERM handler tells the other ranks and raises SIGTERMException between steps;
    SIGINT gets a handler here so that Ctrl+C no longer aborts in the middle of a step.
    """

    def __init__(self, checkpoint_path: str) -> None:
        self.checkpoint_path = checkpoint_path
        self.received: int | None = None
        self._sigint = False
        self._previous_sigint: Any = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._sigint:  # a second Ctrl+C: stop waiting for the step to end
            raise KeyboardInterrupt
        self._sigint = True
        log.warning("received SIGINT: saving a checkpoint after the current step (press again to abort)")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _save(self, trainer: pl.Trainer, signum: int) -> None:
        self.received = signum
        trainer.save_checkpoint(self.checkpoint_path)
        log.warning("checkpoint saved at step %d to %s", trainer.global_step, self.checkpoint_path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._sigint and self.received is None:
            self._save(trainer, signal.SIGINT)
            trainer.should_stop = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning raises this between steps once SIGTERM has arrived, so the state is consistent here.
        if isinstance(exception, SIGTERMException) and self.received is None:
            self._save(trainer, signal.SIGTERM)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_bf16_speedup(size: int = 512, repeats: int = 5) -> float:
    """How many times faster a bf16-autocast matrix product runs than a float32 one on this CPU
    (best of `repeats`, a few milliseconds each): the flag alone does not say that bf16 pays."""
    a, b = torch.randn(4 * size, size), torch.randn(size, 2 * size)

    def best(bf16: bool) -> float:
        times = []
        for _ in range(repeats + 1):  # the first call warms up the kernel
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                a @ b
            times.append(time.perf_counter() - start)
        return min(times[1:])

    return best(False) / best(True)


def resolve_precision(precision: str, accelerator: str) -> str:
    """'auto' means bf16-mixed where the hardware has fast bf16, else full 32-bit."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    if not cpu_has_bf16():
        return "32-true"
    speedup = cpu_bf16_speedup()
    log.info("bf16 on this CPU: %.1fx the float32 matrix speed", speedup)
    return "bf16-mixed" if speedup >= 1.2 else "32-true"


class TrainingClock(Callback):
    """Seconds spent in training steps (validation excluded), kept across resumes; logs tokens/s."""

    def __init__(self, log_every_n_steps: int, flops_per_token: float = 0.0) -> None:
        self.log_every_n_steps = log_every_n_steps
        self.flops_per_token = flops_per_token
        self.peak_flops: float | None = None
        self.prior_seconds = 0.0
        self._running_since: float | None = None
        self._session_seconds = 0.0
        self._last_log: tuple[float, int] | None = None

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
            self._last_log = (self.seconds, int(pl_module.train_tokens), int(pl_module.train_samples))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.log_every_n_steps or self._last_log is None:
            return
        now, tokens, samples = self.seconds, int(pl_module.train_tokens), int(pl_module.train_samples)
        then, tokens_then, samples_then = self._last_log
        if now > then:
            per_device = (tokens - tokens_then) / (now - then)
            # Non-pad tokens, all ranks (they run in lockstep, so rank 0's rate times the world size).
            pl_module.log("throughput/tokens_per_sec", per_device * trainer.world_size, prog_bar=True)
            pl_module.log("throughput/samples_per_sec", (samples - samples_then) / (now - then) * trainer.world_size)
            if self.peak_flops:
                pl_module.log("throughput/mfu", per_device * self.flops_per_token / self.peak_flops)
        self._last_log = (now, tokens, samples)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.strategy.root_device.type == "cuda":  # the GPU's peak FLOP/s, as Lightning tabulates them
            from lightning_fabric.utilities.throughput import get_available_flops

            dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else (
                torch.float16 if "16" in str(trainer.precision) else torch.float32)
            self.peak_flops = get_available_flops(trainer.strategy.root_device, dtype)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()
        self._last_log = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.prior_seconds = state_dict.get("seconds", 0.0)


def build_trainer(
    job_dir: str, max_steps: int, validate_every_n_steps: int, checkpoint_every_n_steps: int,
    accelerator: str = "auto", devices: str | int = "auto", precision: str = "auto", strategy: str = "auto",
    num_nodes: int = 1, max_time: timedelta | None = None, log_every_n_steps: int = 10, gradient_clip_val: float = 1.0,
    progress: bool = True, purge_step: int | None = None, flops_per_token: float = 0.0,
) -> tuple[pl.Trainer, TrainingClock, GracefulStop]:
    clock = TrainingClock(log_every_n_steps, flops_per_token)
    stopper = GracefulStop(os.path.join(job_dir, "checkpoints", "last.ckpt"))
    checkpoints = ModelCheckpoint(
        dirpath=os.path.join(job_dir, "checkpoints"), filename="step-{step}", every_n_train_steps=checkpoint_every_n_steps,
        save_top_k=0, save_last=True,  # one rolling last.ckpt: enough to resume, no disk creep
    )
    # On resume, purge_step tells TensorBoard to drop what the interrupted run logged after its checkpoint.
    logger = TensorBoardLogger(save_dir=job_dir, name="tensorboard", version="", default_hp_metric=False,
                               purge_step=purge_step)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        precision=resolve_precision(precision, accelerator), max_steps=max_steps, max_time=max_time,
        max_epochs=-1, val_check_interval=validate_every_n_steps, check_val_every_n_epoch=None,
        log_every_n_steps=log_every_n_steps, gradient_clip_val=gradient_clip_val or None,
        callbacks=[checkpoints, clock, stopper], logger=logger, enable_progress_bar=progress,
        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=job_dir,
        plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,  # our sampler shards by rank and resumes
    )
    return trainer, clock, stopper
