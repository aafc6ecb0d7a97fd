"""The LightningModule: a RoBERTa trained with the masked-LM objective."""
import math
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from transformers import RobertaConfig, RobertaForMaskedLM

from common import PipelineError
from training.config import MAX_POSITIONS, MODEL_SIZES
from training.masking import mask_key
from training.devices import accumulator_dtype, default_attention
from training.schedule import Schedule


class NonFiniteLossError(PipelineError):
    """Training diverged: too many consecutive steps with a NaN or infinite loss."""




def build_config(vocab_size: int, model_size: str = "base", hidden_size: int | None = None,
                 num_layers: int | None = None, num_heads: int | None = None, pad_token_id: int = 1,
                 bos_token_id: int = 0, eos_token_id: int = 2) -> RobertaConfig:
    """A RobertaConfig from a size preset, with explicit overrides and the tokenizer's ids."""
    hidden, layers, heads, _ = MODEL_SIZES[model_size]
    hidden, layers, heads = hidden_size or hidden, num_layers or layers, num_heads or heads
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
    return RobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=MAX_POSITIONS, type_vocab_size=1,
        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
    )


def flops_per_token(config: RobertaConfig, seq_len: int, mlm_probability: float) -> float:
    """Training FLOPs per token (6 x multiply-adds) as this module computes them: every layer but the
    last in full, with attention over `seq_len`; the last layer's keys and values in full and the rest of
    it, like the LM head, at masked positions only."""
    h, layers, vocab, ff = config.hidden_size, config.num_hidden_layers, config.vocab_size, config.intermediate_size
    full_layer = 4 * h * h + 2 * h * ff + 2 * h * seq_len
    last_layer = 2 * h * h + mlm_probability * (2 * h * h + 2 * h * ff + 2 * h * seq_len)
    head = mlm_probability * (h * h + h * vocab)
    return 6.0 * ((layers - 1) * full_layer + last_layer + head)


def sentence_attention_mask(segment_ids: torch.Tensor, implementation: str) -> torch.Tensor:
    """A (batch, 1, length, length) mask letting each token attend only to its own sentence:
    boolean for SDPA, additive (0 or a large negative number) for the eager implementation."""
    same = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    if implementation == "sdpa":
        return same
    # In the autocast dtype: a float32 mask would promote every attention score to float32 (15% of a CPU step).
    device = same.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    return torch.zeros(same.shape, dtype=dtype, device=same.device).masked_fill_(~same, torch.finfo(dtype).min)


def last_layer_at(layer: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The encoder's last layer evaluated only at the positions `order` picks in each row: (batch, picked, width).

    Keys and values still come from every position, but queries, the attention output and the
    feed-forward block run only at the picked (masked) positions, which is all the loss needs: the
    result equals the full layer's output there.
    """
    attn = layer.attention.self
    batch, length, width = hidden.shape
    heads, size, most = attn.num_attention_heads, attn.attention_head_size, order.shape[1]
    picked = torch.gather(hidden, 1, order[:, :, None].expand(-1, -1, width))

    def split(x: torch.Tensor) -> torch.Tensor:  # (batch, tokens, width) -> (batch, heads, tokens, size)
        return x.view(batch, -1, heads, size).transpose(1, 2)

    query, key, value = split(attn.query(picked)), split(attn.key(hidden)), split(attn.value(hidden))
    scores = torch.matmul(query, key.transpose(2, 3)) * attn.scaling
    rows = torch.gather(mask, 2, order[:, None, :, None].expand(-1, mask.shape[1], -1, length))
    scores = scores.masked_fill(~rows, torch.finfo(scores.dtype).min) if rows.dtype == torch.bool else scores + rows
    context = torch.matmul(attn.dropout(torch.softmax(scores, dim=-1)), value)
    attended = layer.attention.output(context.transpose(1, 2).reshape(batch, most, width), picked)
    return layer.output(layer.intermediate(attended), attended)


def masked_lm_loss(model: RobertaForMaskedLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   labels: torch.Tensor, segment_ids: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None, masked_most: int | None = None,
                   masked_total: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, correct predictions, masked tokens), computing the model only as far as the loss needs.

    Only the masked positions (15-30%) carry a label, so the last layer runs its queries and feed-forward block
    there alone (`last_layer_at`) and the output layer (hidden x vocabulary) sees only those rows; the
    loss and gradients equal the full model's. With `segment_ids` (packed blocks), attention stays within
    each sentence; without, padding (attention_mask 0) is the only thing hidden. `masked_most` (most
    labels in a row) and `masked_total` (labels in the batch) come from the collator: given, nothing
    here waits for the device; missing, they are read back from it.
    """
    if segment_ids is None:  # one sentence per row: real tokens form segment 0, padding segment -1
        segment_ids = attention_mask.long() - 1 if attention_mask is not None else torch.zeros_like(input_ids)
    mask = sentence_attention_mask(segment_ids, model.config._attn_implementation)
    hidden = model.roberta.embeddings(input_ids=input_ids, position_ids=position_ids)
    *lower, last = model.roberta.encoder.layer
    for layer in lower:
        hidden = layer(hidden, mask)
    masked = labels != -100
    if masked_most is None or masked_total is None:
        counts = masked.sum(1)
        masked_most, masked_total = (int(counts.max()), int(counts.sum())) if len(counts) else (0, 0)
    # Each row's masked positions first, in order (a sort, not boolean indexing: no read-back of the count).
    order = torch.argsort((~masked).to(torch.int8), dim=1, stable=True)[:, :masked_most]
    out = last_layer_at(last, hidden, mask, order)
    targets = torch.gather(labels, 1, order).flatten()  # -100 in the slots past a row's own masked count
    keep = torch.argsort((targets == -100).to(torch.int8), stable=True)[:masked_total]
    logits = model.lm_head(out.flatten(0, 1)[keep]).float()
    targets = targets[keep]
    loss = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.argmax(dim=-1) == targets).sum()
    n = masked.sum()
    return loss / n.clamp(min=1), correct, n


def align_batch_progress(checkpoint: dict, accumulate_grad_batches: int) -> None:
    """Put Lightning's restored batch counters on this run's step grid: global step x K batches.

    Lightning decides accumulation windows and validations by counting batches (its loop state in the
    checkpoint), so after a resume with another --accumulate-grad-batches its count would put every
    window and validation off the optimizer steps (a validation every n steps might never come). The
    training stream never ends an epoch, so the batches of this "epoch" (current) and of the run (total)
    are both step x K; each is shifted there, keeping the gaps between its counters (a checkpoint saved at a
    batch's end has it ready but not yet completed). The one place that writes Lightning's loop state
    (tests/test_topology.py fails if its layout changes).
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    for counters in (progress["total"], progress["current"]):
        shift = checkpoint["global_step"] * accumulate_grad_batches - counters["ready"]
        for name in ("ready", "started", "processed", "completed"):
            counters[name] += shift


class MaskedLMModule(pl.LightningModule):
    def __init__(
        self, vocab_size: int, model_size: str = "base", hidden_size: int | None = None, num_layers: int | None = None,
        num_heads: int | None = None, pad_token_id: int = 1, bos_token_id: int = 0, eos_token_id: int = 2,
        lr: float = 5e-4, weight_decay: float = 0.01, warmup_ratio: float = 0.06, max_steps: int | None = 1000,
        adam_betas: tuple[float, float] = (0.9, 0.98), adam_eps: float = 1e-6, max_bad_steps: int = 10,
        config_dict: dict | None = None, compile: bool = False, dropout: float | None = 0.0, attention: str = "auto",
        fused_adamw: bool = False, check_every_n_steps: int = 1, lr_schedule: str = "linear",
        warmup_steps: int | None = None, decay_ratio: float = 0.2, max_seconds: float | None = None,
        masked_per_batch: float = 600.0, seed: int = 42,
    ) -> None:
        """A fresh RoBERTa of the given size, or, with `config_dict`, of that exact configuration
        (continued pretraining: the caller then loads the pretrained weights). `dropout` replaces the
        config's hidden and attention dropout (None keeps them); `attention` is sdpa, eager or auto.
        `fused_adamw` and `check_every_n_steps` come from the device plan (training/devices.py): the
        fused optimizer skips non-finite steps on the device, and the host reads the count of such steps
        back every `check_every_n_steps`. The learning rate follows `Schedule` over `max_steps` and/or
        `max_seconds` of training, read from `elapsed_seconds` (set by the trainer's clock). Gradients are
        the mean over every masked token of the optimizer step, whatever the accumulation and the ranks;
        `masked_per_batch` (about the labels in a batch) only sets the scale of the backward pass."""
        super().__init__()
        self.save_hyperparameters()
        self.config = RobertaConfig.from_dict(config_dict) if config_dict else build_config(
            vocab_size, model_size, hidden_size, num_layers, num_heads, pad_token_id, bos_token_id, eos_token_id)
        if dropout is not None:
            self.config.hidden_dropout_prob = self.config.attention_probs_dropout_prob = dropout
        self.model = RobertaForMaskedLM(self.config)
        # Non-pad tokens, samples and labelled tokens (for MFU) this rank has trained on in this process, and
        # the totals over all ranks before it (from the checkpoint). Not a buffer: DDP copies rank 0's buffers
        # over the other ranks' at every step.
        self.seen = torch.zeros(3, dtype=torch.long)
        self.seen_before = [0, 0, 0]
        if compile:  # in place, so the state dict keeps its plain names; the sparse last layer stays eager
            for layer in self.model.roberta.encoder.layer[:-1]:
                layer.compile()
        self._val_sums: torch.Tensor | None = None
        self._bad: torch.Tensor | None = None  # on the device: steps skipped, current run, longest run
        self.skipped_steps = 0
        self._window_masked: torch.Tensor | None = None  # labels in this optimizer step's batches so far
        self._window_bad: torch.Tensor | None = None
        self.elapsed_seconds = lambda: 0.0  # training seconds so far, the same on every rank (TrainingClock)
        self.before_validation_step: Callable[[int], None] = lambda batch_idx: None  # LastCheckpoint's stop
        self.last_validated_step = -1
        self.total_train_tokens = 0  # over all ranks, set with each checkpoint
        self.samples_consumed = 0  # of the training stream, all ranks: where a resume goes on (TrainingStream)
        self._step_log: tuple[torch.Tensor, float] | None = None  # (loss, accuracy) on the device, and the lr
        self.first_step_loss: torch.Tensor | None = None  # on the device; set by a run that starts at step 0
        self._interval_loss: torch.Tensor | None = None  # sum of the batches' losses since the last take, on the device
        self._interval_batches = 0

    def setup(self, stage: str) -> None:
        # Lightning calls this before moving the model, so ask the strategy where it will run.
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        self.model.set_attn_implementation(default_attention(device.type) if self.hparams.attention == "auto"
                                           else self.hparams.attention)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Every rank saves together (Trainer.save_checkpoint), so the counts can be summed over ranks here.
        seen = self.seen.to(self.trainer.strategy.root_device, copy=True)  # a copy: the reduction is in place
        seen = self.trainer.strategy.reduce(seen, reduce_op="sum").tolist()
        checkpoint["seen"] = [int(a + b) for a, b in zip(self.seen_before, seen)]
        self.total_train_tokens = checkpoint["seen"][0]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        old = [checkpoint["state_dict"].pop(f"train_{k}", 0) for k in ("tokens", "samples", "masked")]  # 2025 buffers
        self.seen_before = [int(x) for x in checkpoint.get("seen", old)]
        self.total_train_tokens = self.seen_before[0]
        align_batch_progress(checkpoint, self.trainer.accumulate_grad_batches)
        # Optimizer.load_state_dict restores each group's flags as saved: a checkpoint of a foreach run (older
        # CPU runs, 16-mixed GPUs) would turn this run's fused optimizer into a foreach one, which refuses the
        # found_inf that configure_gradient_clipping sets. The optimizer is this run's plan's, not the saved one's.
        # It also restores each group's rate and decay, and LambdaLR its base rates: a resumed run given a new --lr or
        # --weight-decay would go on with the old ones while run_config.json and the model card record the new.
        hp = self.hparams
        for state in checkpoint.get("optimizer_states", []):
            for group, weight_decay in zip(state["param_groups"], self.group_weight_decays()):
                peak = group.get("initial_lr") or hp.lr
                group.update(fused=hp.fused_adamw or None, foreach=None, lr=group["lr"] * hp.lr / peak,
                             initial_lr=hp.lr, weight_decay=weight_decay)
        for scheduler in checkpoint.get("lr_schedulers", []):
            scheduler["base_lrs"] = [hp.lr] * len(scheduler.get("base_lrs", []))

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Dropout (if any) draws from a generator keyed by the seed, rank and position in the data: a resumed
        # run draws the same, with no random state to save (the masks are keyed by sample, see MaskedLMCollator).
        torch.manual_seed(mask_key(self.hparams.seed, self.global_rank, self.samples_consumed))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.samples_consumed += len(batch["input_ids"]) * self.trainer.world_size  # every rank's batch is full
        loss, correct, n = masked_lm_loss(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                          batch.get("segment_ids"), batch.get("position_ids"),
                                          batch.get("masked_most"), batch.get("masked_total"))
        bad = ~torch.isfinite(loss.detach())
        first = self._window_masked is None
        self._window_masked = n.to(accumulator_dtype(n.device)) if first else self._window_masked + n
        self._window_bad = bad if first else self._window_bad | bad
        if self.seen.device != n.device:
            self.seen = self.seen.to(n.device)
        self.seen[0] += batch["attention_mask"].sum()
        self.seen[1] += len(batch["input_ids"])
        self.seen[2] += n
        self.log("train/loss", loss, prog_bar=True, logger=False)  # the bar; TrainingClock writes the log
        self._step_log = (torch.stack([loss.detach().float(), correct / n.clamp(min=1)]), self.lr_schedulers().get_last_lr()[0])
        if self.global_step == 0 and self.first_step_loss is None:
            self.first_step_loss = loss.detach().float()
        self._interval_loss = loss.detach().float() + (0 if self._interval_loss is None else self._interval_loss)
        self._interval_batches += 1
        # A sum over this batch's labels; configure_gradient_clipping divides by all the step's labels.
        return loss * n / self.hparams.masked_per_batch

    def step_log(self) -> dict[str, float]:
        """The last batch's loss and accuracy and the step's learning rate (one read-back from the device)."""
        if self._step_log is None:
            return {}
        (loss, accuracy), lr = self._step_log[0].tolist(), self._step_log[1]
        return {"train/loss": loss, "train/mlm_accuracy": accuracy, "lr": lr}

    def interval_losses(self) -> int:
        """Batches trained since the last `take_interval_loss`."""
        return self._interval_batches

    def take_interval_loss(self) -> float:
        """The mean training loss of the batches since the last call (one read-back from the device)."""
        mean = float(self._interval_loss) / max(self._interval_batches, 1)
        self._interval_loss, self._interval_batches = None, 0
        return mean

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradient norm and skip the update of a step whose loss or gradients are not finite.

        Called by Lightning after the backward pass (and after a 16-mixed scaler has unscaled the
        gradients). Lightning's own clipping refuses fused optimizers under mixed precision because a
        fused step may unscale internally; bf16 has no scaler, so clipping here is exact. The skip is
        decided on the device: the fused AdamW kernel (GPUs and CPUs) reads `found_inf` and leaves weights
        and state untouched; the foreach one (MPS, 16-mixed) gets no gradients for the step (that needs the
        flag on the host; a 16-mixed scaler reads its own flag anyway).
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        masked, loss_bad, self._window_masked, self._window_bad = self._window_masked, self._window_bad, None, None
        if not params:
            return
        grads = [p.grad for p in params]
        # Lightning divided each batch's sum by the batches accumulated, DDP averaged over ranks: undo both
        # and divide by the labels of the whole step, so K batches of B equal one of K x B, and n ranks one.
        world = self.trainer.world_size if torch.distributed.is_initialized() else 1
        if world > 1:
            torch.distributed.all_reduce(masked)
        scale = self.hparams.masked_per_batch * self.trainer.accumulate_grad_batches * world / masked.clamp(min=1)
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        if gradient_clip_val:
            norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=None)
        else:
            norm = torch.nn.utils.get_total_norm(grads, foreach=None)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        bad = loss_bad
        if scaler is None:  # with a scaler, overflowing gradients are its business: it skips and lowers the scale
            bad = bad | ~torch.isfinite(norm)
        bad = bad.float()
        if world > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # every rank skips together
        if self._bad is None:
            self._bad = torch.zeros(3, device=bad.device)
        run = (self._bad[1] + 1) * bad
        self._bad = torch.stack([self._bad[0] + bad, run, torch.maximum(self._bad[2], run)])
        if self.hparams.fused_adamw:
            optimizer.found_inf = bad  # read by the fused kernel: 1 skips the update and the step count
        elif bool(bad):
            for p in params:
                p.grad = None  # AdamW leaves parameters without gradients (and their state) alone

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._bad is None or self.global_step % self.hparams.check_every_n_steps:
            return
        skipped, _, longest = (int(x) for x in self._bad.tolist())  # the only read-back, every few steps
        if skipped != self.skipped_steps:  # written when it changes (Lightning re-logs a value until an epoch ends)
            self.skipped_steps = skipped
            for logger in self.trainer.loggers:
                logger.log_metrics({"train/skipped_steps": float(skipped)}, step=self.global_step - 1)
        if longest >= self.hparams.max_bad_steps:
            raise NonFiniteLossError(
                f"the loss or its gradients were NaN or infinite for {longest} steps in a row (by step "
                f"{self.global_step}); lower --lr or use --precision 32-true; the last good checkpoint is kept"
            )

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(3, dtype=accumulator_dtype(self.device), device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.before_validation_step(batch_idx)
        loss, correct, n = masked_lm_loss(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                          masked_most=batch.get("masked_most"), masked_total=batch.get("masked_total"))
        dtype = self._val_sums.dtype
        self._val_sums += torch.stack([loss.to(dtype) * n, correct.to(dtype), n.to(dtype)])

    def on_validation_epoch_end(self) -> None:
        # Sum over all batches and ranks first, then divide: the mean over masked tokens, not over batches.
        loss_sum, correct, n = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum").tolist()
        val_loss = loss_sum / max(n, 1.0)
        self.log_dict({
            "val/loss": val_loss,
            "val/perplexity": perplexity(val_loss),
            "val/mlm_accuracy": correct / max(n, 1.0),
        }, prog_bar=True)  # identical on every rank after the reduction above
        self.last_validated_step = self.trainer.global_step

    def group_weight_decays(self) -> tuple[float, float]:
        """AdamW's parameter groups' weight decay, in order: weight matrices, then biases and LayerNorm (none)."""
        return self.hparams.weight_decay, 0.0

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
        groups = [{"params": params, "weight_decay": weight_decay}
                  for params, weight_decay in zip((decay, no_decay), self.group_weight_decays())]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=hp.adam_betas, eps=hp.adam_eps,
                                      fused=hp.fused_adamw or None)
        schedule = Schedule(hp.lr_schedule, hp.max_steps, hp.max_seconds, hp.warmup_ratio, hp.warmup_steps,
                            hp.decay_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step, self.elapsed_seconds()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def perplexity(loss: float) -> float:
    """exp(mean masked-token cross-entropy), overflowing to inf rather than raising."""
    return math.exp(loss) if loss < 700 else math.inf
