"""The unigram plateau: the loss of a model that predicts each masked token without its context (from the token
frequencies, and the token left in view), where a fresh masked LM sits before it learns to use the context,
and the step a run leaves it."""
import logging
import math
from typing import Any, Iterable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger("training")

# Left the plateau: an interval's mean training loss at least this share below the plateau loss. Large
# enough that the noise of a 10-step mean at batch 8 (about 0.1-0.2 nats) does not cross it, small enough
# that a run using its context clears it within tens of steps.
PLATEAU_MARGIN = 0.05
SAMPLE_CHUNKS = 64  # a large corpus is sampled in this many slices spread over it


def token_frequencies(tokens: np.ndarray, vocab_size: int, special_ids: Iterable[int],
                      max_tokens: int = 20_000_000) -> np.ndarray:
    """Each token's share of the stream, special tokens (never masked) left out; up to `max_tokens`, in slices
    spread over the stream."""
    if tokens.size > max_tokens:
        step, size = tokens.size // SAMPLE_CHUNKS, max_tokens // SAMPLE_CHUNKS
        tokens = np.concatenate([tokens[i * step : i * step + size] for i in range(SAMPLE_CHUNKS)])
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)[:vocab_size]
    counts[[i for i in special_ids if 0 <= i < vocab_size]] = 0
    total = counts.sum()
    return counts / total if total else counts


def context_free_loss(p: np.ndarray, mask_rule: str = "80-10-10") -> float:
    """The lowest mean loss over the labelled positions of a model that ignores the context, in nats: at a
    <mask>, the entropy of the frequencies `p`; where 80-10-10 leaves a token in view (half of the other 20%:
    the label itself, half: a token drawn uniformly from the whole vocabulary, as MaskedLMCollator draws it),
    the best guess from that token as well, which is about a tenth below it."""
    nonzero = p > 0
    plogp = np.zeros_like(p)
    plogp[nonzero] = p[nonzero] * np.log(p[nonzero])
    entropy = -plogp.sum()
    if mask_rule == "all-mask" or not nonzero.any():
        return float(entropy)
    r = 1.0 / len(p)
    seen = 0.5 * p + 0.5 * r  # P(token v in view)
    same = 0.5 * p * (1 + r)  # P(label v, v in view): kept, or drawn as itself
    label_is_v = np.zeros_like(p)
    label_is_v[nonzero] = same[nonzero] * np.log(same[nonzero] / seen[nonzero])
    # labels y != v in view of v: a random draw, probability 0.5 p(y) r each
    other = 0.5 * r * ((plogp.sum() - plogp) + (1 - p) * (np.log(0.5 * r) - np.log(seen)))
    in_view = -(label_is_v + other).sum()
    return float(0.8 * entropy + 0.2 * in_view)


def unigram_log_prior(p: np.ndarray) -> np.ndarray:
    """log p per token: the output bias with which a model's masked-token guess, before it uses any context, is
    the token frequencies. Tokens never seen (special ones included) share the rarest seen token's share
    between them: never impossible, and not a mass that would raise the first loss."""
    seen, unseen = p[p > 0], int((p == 0).sum())
    floor = seen.min() / max(unseen, 1) if seen.size else 1.0 / len(p)
    return np.log(np.maximum(p, floor))


class TrainingTokenFrequencies:
    """`token_frequencies` of the training split, computed once for every callback that reads them."""

    def __init__(self, special_ids: Iterable[int]) -> None:
        self.special_ids = list(special_ids)
        self._key: tuple[Any, int] | None = None  # (the split, the vocabulary size) the frequencies are of
        self._p: np.ndarray | None = None

    def __call__(self, trainer: pl.Trainer, vocab_size: int) -> np.ndarray:
        split = trainer.datamodule.train_split
        if self._p is None or self._key[0] is not split or self._key[1] != vocab_size:
            self._p = token_frequencies(split.tokens, vocab_size, self.special_ids)
            self._p.setflags(write=False)  # shared by the callbacks: none may change it for the others
            self._key = (split, vocab_size)
        return self._p


class UnigramOutputBias(Callback):
    """Sets the output layer's bias of a fresh model to `unigram_log_prior` of the training tokens, so that it
    starts on the unigram plateau instead of spending its first hundreds of steps climbing down from log(vocab)
    to it (a zero bias moves by about the learning rate a step). Runs at setup, for a fresh model only (a resumed
    run's bias is its checkpoint's); every rank computes the same bias from the same tokens."""

    def __init__(self, frequencies: TrainingTokenFrequencies) -> None:
        self.frequencies = frequencies

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        p = self.frequencies(trainer, pl_module.config.vocab_size)
        head = pl_module.model.lm_head
        prior = torch.from_numpy(unigram_log_prior(p))
        with torch.no_grad():  # decoder.bias is what the forward pass adds; lm_head.bias is tied to it, or saved
            for bias in {id(b): b for b in (head.decoder.bias, head.bias)}.values():
                bias.copy_(prior.to(bias.dtype))


def plateau_exit_step(curve: Iterable[tuple[int, float]], plateau_loss: float,
                      margin: float = PLATEAU_MARGIN) -> int | None:
    """The first step of (step, mean training loss) points whose loss is `margin` (a share) below the
    plateau; None if none is."""
    below = plateau_loss * (1 - margin)
    return next((step for step, loss in curve if loss < below), None)


class PlateauWatch(Callback):
    """Logs the first batch's training loss and the plateau's loss (`context_free_loss`) at the start, and the
    optimizer step at which the mean training loss of a logging interval first falls `PLATEAU_MARGIN` below the
    plateau; all three go to final_metrics.json, so that a run that spent its budget stuck says so. Global rank
    0 alone watches (its own batches); kept across resumes."""

    def __init__(self, log_every_n_steps: int, frequencies: TrainingTokenFrequencies,
                 mask_rule: str = "80-10-10") -> None:
        self.log_every_n_steps = max(log_every_n_steps, 1)
        self.frequencies, self.mask_rule = frequencies, mask_rule
        self.first_step_loss: float | None = None
        self.plateau_loss: float | None = None
        self.exit_step: int | None = None
        self._last_step: int | None = None
        self._measured = False  # an interval was compared with the plateau in this process

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        if self.plateau_loss is None:
            p = self.frequencies(trainer, pl_module.config.vocab_size)
            self.plateau_loss = context_free_loss(p, self.mask_rule)
        log.info("unigram plateau: loss %.3f (the best without the context: the token frequencies%s); leaving it "
                 "means a training loss below %.3f", self.plateau_loss,
                 "" if self.mask_rule == "all-mask" else ", and the token 80-10-10 leaves in view",
                 self.plateau_loss * (1 - PLATEAU_MARGIN))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        if not trainer.is_global_zero or not stepped:  # with accumulation, a step ends every K batches
            return
        if self.first_step_loss is None and pl_module.first_step_loss is not None:
            self.first_step_loss = float(pl_module.first_step_loss)
            log.info("first step: training loss %.3f (plateau %.3f)", self.first_step_loss, self.plateau_loss)
        if trainer.global_step % self.log_every_n_steps == 0:
            self._check(trainer.global_step, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._check(trainer.global_step, pl_module)  # the last, partial interval

    def _check(self, step: int, pl_module: pl.LightningModule) -> None:
        batches = pl_module.interval_losses()
        if not batches or self.plateau_loss is None:
            return
        mean = pl_module.take_interval_loss()
        self._measured = True
        if self.exit_step is None and plateau_exit_step([(step, mean)], self.plateau_loss) is not None:
            self.exit_step = step
            log.info("left the unigram plateau (%.3f) at step %d: mean training loss %.3f over the last %d batches",
                     self.plateau_loss, step, mean, batches)

    def summary(self) -> dict[str, float | int | None]:
        """The figures for final_metrics.json; warns when the run ended on the plateau."""
        if self.exit_step is None and self._measured:
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
