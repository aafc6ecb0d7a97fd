"""The unigram plateau: the loss of a model that predicts each masked token from the token frequencies
alone, where a fresh masked LM sits before it learns to use the context, and the step a run leaves it."""
import logging
import math
from typing import Any, Iterable

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

log = logging.getLogger("training")

# Left the plateau: an interval's mean training loss at least this share below the plateau loss. Large
# enough that the noise of a 10-step mean at batch 8 (about 0.1-0.2 nats) does not cross it, small enough
# that a run using its context clears it within tens of steps.
PLATEAU_MARGIN = 0.05
SAMPLE_CHUNKS = 64  # a large corpus is sampled in this many slices spread over it


def unigram_entropy(tokens: np.ndarray, vocab_size: int, special_ids: Iterable[int], max_tokens: int = 20_000_000) -> float:
    """Entropy in nats of the token frequencies, special tokens (never masked) left out: the loss of the best
    prediction that ignores the context. Up to `max_tokens`, in slices spread over the stream."""
    if tokens.size > max_tokens:
        step, size = tokens.size // SAMPLE_CHUNKS, max_tokens // SAMPLE_CHUNKS
        tokens = np.concatenate([tokens[i * step : i * step + size] for i in range(SAMPLE_CHUNKS)])
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    counts[[i for i in special_ids if 0 <= i < len(counts)]] = 0
    total = counts.sum()
    if total == 0:
        return math.nan
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def plateau_exit_step(curve: Iterable[tuple[int, float]], plateau_loss: float,
                      margin: float = PLATEAU_MARGIN) -> int | None:
    """The first step of (step, mean training loss) points whose loss is `margin` (a share) below the
    plateau; None if none is."""
    below = plateau_loss * (1 - margin)
    return next((step for step, loss in curve if loss < below), None)


class PlateauWatch(Callback):
    """Logs the first step's training loss and the unigram plateau's loss at the start, and the step at which
    the mean training loss of a logging interval first falls `PLATEAU_MARGIN` below the plateau; all three go
    to final_metrics.json, so that a run that spent its budget stuck says so. Kept across resumes."""

    def __init__(self, log_every_n_steps: int, special_ids: Iterable[int]) -> None:
        self.log_every_n_steps = max(log_every_n_steps, 1)
        self.special_ids = list(special_ids)
        self.first_step_loss: float | None = None
        self.plateau_loss: float | None = None
        self.exit_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plateau_loss is None:
            split = trainer.datamodule.train_split
            self.plateau_loss = unigram_entropy(split.tokens, pl_module.config.vocab_size, self.special_ids)
            log.info("unigram plateau: loss %.3f (the token frequencies alone); leaving it means a training loss "
                     "below %.3f", self.plateau_loss, self.plateau_loss * (1 - PLATEAU_MARGIN))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.first_step_loss is None and pl_module.first_step_loss is not None:
            self.first_step_loss = float(pl_module.first_step_loss)
            log.info("first step: training loss %.3f (plateau %.3f)", self.first_step_loss, self.plateau_loss)
        if trainer.global_step % self.log_every_n_steps or not pl_module.interval_losses():
            return
        mean = pl_module.take_interval_loss()
        if self.exit_step is None and plateau_exit_step([(trainer.global_step, mean)], self.plateau_loss) is not None:
            self.exit_step = trainer.global_step
            log.info("left the unigram plateau (%.3f) at step %d: mean training loss %.3f over the last %d steps",
                     self.plateau_loss, self.exit_step, mean, self.log_every_n_steps)

    def summary(self) -> dict[str, float | int | None]:
        """The figures for final_metrics.json; warns when the run ended on the plateau."""
        if self.exit_step is None and self.plateau_loss is not None:
            log.warning("the run ended on the unigram plateau (training loss never %.0f%% below %.3f): the budget "
                        "was spent before the model used the context; train longer (--max-time) or smaller "
                        "(--model-size)", PLATEAU_MARGIN * 100, self.plateau_loss)
        return {"first_step_loss": _rounded(self.first_step_loss), "unigram_plateau_loss": _rounded(self.plateau_loss),
                "plateau_exit_step": self.exit_step}

    def state_dict(self) -> dict[str, Any]:
        return {"first_step_loss": self.first_step_loss, "plateau_loss": self.plateau_loss, "exit_step": self.exit_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first_step_loss = state_dict.get("first_step_loss")
        self.plateau_loss = state_dict.get("plateau_loss")
        self.exit_step = state_dict.get("exit_step")


def _rounded(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)
