"""Step 3 end to end: check inputs, train (or resume), validate, export, write final metrics."""
import logging
import os
import signal
import subprocess
import time
import warnings
from dataclasses import replace
from typing import Any

import pytorch_lightning as pl
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from common import Interrupted, UsageError, write_json_atomic
from training.config import (RUN_IDENTITY, TrainingConfig, choose_model_size, local_processes, parse_max_time,
                             resolve_defaults, step_budget, validate_config, warmup_ratio)
from training.data_module import MaskedLMDataModule, start_worker_helpers
from training.export import export_model
from training.job_dir import check_job_dir, read_run_config, record_job_dir, resume_checkpoint
from training.model_card import corpus_manifest, model_card, model_name, read_json
from training.model import MaskedLMModule, perplexity
from training.plateau import PlateauWatch, TrainingTokenFrequencies, UnigramOutputBias
from training.token_cache import file_sha256, files_fingerprint
from training.devices import apply_plan, check_strategy, device_kind, device_type, plan_for_device
from training.trainer_setup import StopRequested, StopSignals, build_trainer, tensorboard_logger
from training.watch import FillMaskSamples, log_token_embeddings, read_watch_texts

log = logging.getLogger("training")


def load_tokenizer(path: str) -> tuple[PreTrainedTokenizerBase, str]:
    """The tokenizer of step 2 (a directory, or its tokenizer.json), checked to be usable for masked LM."""
    directory = os.path.dirname(path) if os.path.isfile(path) else path
    tokenizer_file = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        raise UsageError(f"no tokenizer.json in {path!r}; pass step 2's --output-dir as --path-to-tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as e:  # a corrupt or foreign file: transformers raises many types
        raise UsageError(f"{tokenizer_file!r} is not a readable tokenizer ({str(e).splitlines()[0][:200]}); "
                         "re-run step 2") from None
    missing = [name for name in ("mask", "pad", "bos", "eos") if getattr(tokenizer, f"{name}_token_id") is None]
    if missing:
        raise UsageError(f"the tokenizer in {path!r} has no {', '.join(missing)} token; fit it with step 2")
    return tokenizer, tokenizer_file


def load_pretrained(model_dir: str, tokenizer: PreTrainedTokenizerBase):
    """A local RoBERTa masked LM to continue pretraining; its vocabulary must be the tokenizer's."""
    from transformers import AutoConfig, RobertaForMaskedLM

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UsageError(f"--init-from {model_dir!r} is not a model directory (no config.json); pass JOB/model "
                         "or a local Hugging Face masked-LM directory")
    config = AutoConfig.from_pretrained(model_dir)  # local files only, never remote code
    if config.model_type not in ("roberta", "xlm-roberta", "camembert"):
        raise UsageError(f"--init-from {model_dir!r} is a {config.model_type!r} model; only RoBERTa-style models are supported")
    if config.vocab_size != len(tokenizer):
        raise UsageError(f"the model in {model_dir!r} has {config.vocab_size} tokens but the tokenizer {len(tokenizer)}; "
                         "drop --path-to-tokenizer to use the model's own tokenizer")
    model = RobertaForMaskedLM.from_pretrained(model_dir)
    return model


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def world_size() -> int:
    """The processes of this run: the process group's, else the launcher's (torchrun and Lightning set WORLD_SIZE,
    srun SLURM_NTASKS)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


class _OncePerRun(logging.Filter):
    """Several processes, one set of lines: a line that says the same on every rank is printed by global rank 0
    alone; a line about one rank (logged with extra={"each_rank": True}) is printed by each, naming it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        rank = getattr(rank_zero_only, "rank", 0) or 0  # from the launcher's environment, then the strategy's
        if not getattr(record, "each_rank", False):
            return rank == 0
        if world_size() > 1 and not record.msg.startswith("rank "):
            record.msg = f"rank {rank}: {record.msg}"
        return True


def quiet_library_noise() -> None:
    """Hide library messages that are advertising or deprecation chatter, not information about this run; print
    this run's own lines once, not once per process."""
    if not any(isinstance(f, _OncePerRun) for f in log.filters):
        log.addFilter(_OncePerRun())
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")  # validation sums are reduced over ranks first


def _checkpoint_step(path: str) -> int:
    try:
        # mmap: every rank reads it, and only the header and one number are needed
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception as e:  # a truncated or foreign file
        raise UsageError(f"cannot resume from {path!r} ({str(e).splitlines()[0][:200]}); "
                         "pass --no-resume to start over") from None


def requeue_slurm_job() -> None:
    """After SIGUSR1 under SLURM (`#SBATCH --signal=USR1@90`, Lightning's convention), put the job back in the
    queue, as Lightning's auto-requeue would, but after the checkpoint is on disk."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job_id:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    except OSError as e:
        log.warning("could not requeue SLURM job %s (%s); resubmit it to resume", job_id, e.strerror)
        return
    if result.returncode == 0:
        log.warning("requeued SLURM job %s", job_id)
    else:
        log.warning("scontrol requeue %s failed (%s); resubmit it to resume", job_id, result.stderr.strip()[:200])


def keep_or_choose_model_size(cfg: TrainingConfig, run: dict[str, Any] | None, kind: str) -> tuple[TrainingConfig, str]:
    """The preset and why: --model-size as given; else the size of the run recorded in the job directory (a
    resumed or rerun job keeps it, whatever its budget or device now); else chosen by the budget."""
    earlier = (run or {}).get("config", {})
    if cfg.model_size is None and earlier.get("model_size"):
        kept = f"{earlier['model_size']}, the size of the run in this job directory"
        why = run.get("model_size_reason") or "not recorded"
        return replace(cfg, model_size=earlier["model_size"]), why if why.startswith(kept) else f"{kept} ({why})"
    return choose_model_size(cfg, kind)


def train(cfg: TrainingConfig) -> dict[str, Any]:
    """Train a masked LM as configured; return the final metrics (also in JOB/final_metrics.json)."""
    started = time.perf_counter()
    validate_config(cfg)
    quiet_library_noise()
    tokenizer, tokenizer_file = load_tokenizer(cfg.tokenizer_path or cfg.init_from or "data/tokenizer")
    watch_texts = read_watch_texts(cfg.watch_texts, tokenizer, cfg.max_seq_length) if cfg.watch_texts else None
    pretrained = load_pretrained(cfg.init_from, tokenizer) if cfg.init_from else None
    if pretrained is not None and cfg.max_seq_length > pretrained.config.max_position_embeddings - 2:
        raise UsageError(f"--max-seq-length {cfg.max_seq_length} exceeds the --init-from model's "
                         f"{pretrained.config.max_position_embeddings - 2} positions")
    check_strategy(cfg.strategy)
    plan = plan_for_device(device_type(cfg.accelerator), cfg.precision, cfg.attention, cfg.num_workers,
                           processes_per_node=local_processes(cfg.devices), log_every_n_steps=cfg.log_every_n_steps)
    apply_plan(plan)
    if plan.num_workers:
        start_worker_helpers()
    log.info("device plan: %s", plan)
    recorded = cfg.resume is not False and os.path.isfile(os.path.join(cfg.job_dir, "run_config.json"))
    run = read_run_config(cfg.job_dir) if recorded else None  # an unusable --job-dir is check_job_dir's to refuse
    resuming = resume_checkpoint(cfg) is not None
    if resuming:  # a resumed run keeps its batch, rate and masking unless given
        earlier = (run or {}).get("config", {})
        cfg = replace(cfg, **{k: earlier.get(k) for k in ("batch_size", "lr", "mlm_probability") if getattr(cfg, k) is None})
        # its weights are the checkpoint's: the output bias it started with is recorded (runs before the flag: zero)
        cfg = replace(cfg, output_bias=earlier.get("output_bias") or "zero")
    # --init-from: the model keeps its own output bias
    cfg = replace(cfg, output_bias=None if pretrained is not None else cfg.output_bias or "unigram")
    size_reason = None
    if pretrained is None:  # --init-from: the model's own config; the rate stays base's (resolve_defaults)
        cfg, size_reason = keep_or_choose_model_size(cfg, run, device_kind(plan))
        log.info("model size: %s", size_reason)
        validate_config(cfg)  # the chosen preset with any --hidden-size or --num-heads given
    identity = {k: getattr(cfg, k) for k in RUN_IDENTITY[:7]}  # those set by flags
    if pretrained is not None:
        c = pretrained.config
        identity.update(model_size="init_from", hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
                        num_heads=c.num_attention_heads)
    identity.update(vocab_size=len(tokenizer), tokenizer_sha256=file_sha256(tokenizer_file))
    cfg = resolve_defaults(cfg, plan.batch_size)
    max_steps, max_seconds = step_budget(cfg), parse_max_time(cfg.max_time)
    datamodule = MaskedLMDataModule(
        cfg.train_path, cfg.val_path, tokenizer, tokenizer_file,
        cache_dir=cfg.cache_dir or os.path.join(cfg.job_dir, "cache"), max_seq_length=cfg.max_seq_length,
        batch_size=cfg.batch_size, mlm_probability=cfg.mlm_probability, mask_rule=cfg.mask_rule, packing=cfg.packing,
        attend_across_sentences=cfg.attend_across_sentences,
        num_workers=plan.num_workers, pin_memory=plan.pin_memory, seed=cfg.seed,
        max_val_sentences=cfg.max_val_sentences, progress=cfg.progress,
    )
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = MaskedLMModule(
        vocab_size=len(tokenizer), model_size=cfg.model_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_ratio=warmup_ratio(cfg),
        max_steps=max_steps, max_bad_steps=cfg.max_bad_steps, lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
        decay_ratio=cfg.decay_ratio, max_seconds=max_seconds,
        masked_per_batch=cfg.batch_size * cfg.max_seq_length * cfg.mlm_probability, seed=cfg.seed,
        config_dict=pretrained.config.to_dict() if pretrained is not None else None, compile=cfg.compile,
        dropout=cfg.dropout, attention=plan.attention, fused_adamw=plan.fused_adamw,
        check_every_n_steps=plan.check_every_n_steps,
    )
    if pretrained is not None:
        module.model.load_state_dict(pretrained.state_dict())
    signals = StopSignals()
    frequencies = TrainingTokenFrequencies(tokenizer.all_special_ids)  # read by both: computed once
    plateau = PlateauWatch(cfg.log_every_n_steps, frequencies, cfg.mask_rule)
    # a resumed run's bias comes with its weights from the checkpoint: nothing to count or set
    output_bias = [UnigramOutputBias(frequencies)] if cfg.output_bias == "unigram" and not resuming else []
    trainer, clock, last = build_trainer(
        cfg.job_dir, plan, max_steps, cfg.validate_every_n_steps, cfg.checkpoint_every_n_steps, cfg.accelerator,
        cfg.devices, cfg.strategy, cfg.num_nodes, max_seconds, cfg.log_every_n_steps,
        cfg.gradient_clip_val, cfg.accumulate_grad_batches, cfg.progress,
        config=module.config, seq_len=cfg.max_seq_length, peak_tflops=cfg.peak_tflops, started=started,
        extra_callbacks=[plateau, *output_bias] + ([FillMaskSamples(tokenizer, watch_texts, cfg.fill_mask_samples, cfg.seed)]
                                     if watch_texts or cfg.fill_mask_samples else []), signals=signals,
    )
    # Launchers (Lightning's, torchrun, srun) start this script once per process. Every rank checks the job
    # directory and the checkpoint (a refusal ends them all, none is left waiting for rank 0 in the process
    # group); global rank 0 alone then prepares the directory (LastCheckpoint.setup checks that the ranks agree).
    identity["train_data"] = files_fingerprint(datamodule.train_files)
    last.resume_from = check_job_dir(cfg, identity)
    resume_step = _checkpoint_step(last.resume_from) if last.resume_from else None
    if trainer.is_global_zero:
        record_job_dir(cfg, identity, last.resume_from, {"model_size_reason": size_reason})
    trainer.logger = tensorboard_logger(cfg.job_dir, resume_step)  # writes nothing off rank 0
    effective_batch = cfg.batch_size * cfg.accumulate_grad_batches * trainer.world_size
    log.info("schedule: %s over %s; effective batch %d sequences (%d x %d accumulated x %d processes)",
             cfg.lr_schedule, " or ".join(x for x in (max_steps and f"{max_steps} steps",
                                                      max_seconds and f"{max_seconds:.0f} s of training") if x),
             effective_batch, cfg.batch_size, cfg.accumulate_grad_batches, trainer.world_size)
    module.elapsed_seconds = lambda: clock.budget_seconds  # the schedule reads the clock that stops the run
    module.before_validation_step = lambda batch_idx: last.stop_before_validating(trainer, batch_idx)
    try:
        with signals:
            trainer.fit(module, datamodule=datamodule, ckpt_path=last.resume_from, weights_only=False)  # our file
            # last.ckpt holds the final step, whatever the interval; a rerun after a kill during the final
            # validation or export (the fit loop then returns at once) comes here too, with the restored counts
            last.save(trainer)
    except StopRequested as stop:  # every rank saved the checkpoint at the same step
        if stop.signum == signal.SIGUSR1 and trainer.is_global_zero:
            requeue_slurm_job()
        message = (f"by {signal.Signals(stop.signum).name} at step {trainer.global_step}; checkpoint in {last.path}; "
                   "run the same command again to resume") if trainer.is_global_zero else ""  # said once, by rank 0
        raise Interrupted(message, stop.signum) from None
    finally:
        datamodule.shutdown_workers()
    if module.last_validated_step != trainer.global_step:  # stopped between validations (or by --max-time)
        trainer.validate(module, datamodule=datamodule, verbose=False)
    m = trainer.callback_metrics
    val_loss = float(m["val/loss"])
    metrics = {
        "val_loss": val_loss,
        "val_perplexity": perplexity(val_loss),
        "val_mlm_accuracy": float(m["val/mlm_accuracy"]),
        "global_step": trainer.global_step,
        "train_tokens": module.total_train_tokens,
        "train_seconds": round(clock.seconds, 3),
        "train_tokens_per_second": round(module.total_train_tokens / max(clock.seconds, 1e-9), 1),
        **plateau.summary(),
    }
    mfu = clock.session_mfu(module)
    if mfu is not None:
        metrics["mfu"] = round(mfu, 4)
        log.info("model FLOPs utilisation: %.1f%% of the device's peak over this process's %.0f s of training",
                 100 * mfu, clock.session_seconds)
    if trainer.is_global_zero:
        if cfg.log_embeddings:
            log_token_embeddings(module.model, tokenizer, datamodule.train_split, cfg.log_embeddings,
                                 trainer.logger.experiment, trainer.global_step)
        training = {k: getattr(cfg, k) for k in ("batch_size", "accumulate_grad_batches", "max_seq_length", "packing",
                                                 "attend_across_sentences", "mlm_probability", "mask_rule", "lr", "lr_schedule",
                                                 "warmup_steps", "decay_ratio", "weight_decay", "dropout", "output_bias",
                                                 "seed")}
        training.update(max_steps=max_steps, max_time=cfg.max_time, warmup_ratio=None if cfg.warmup_steps is not None
                        else warmup_ratio(cfg), effective_batch_size=effective_batch)
        training["attention"] = module.model.config._attn_implementation
        training["precision"] = trainer.precision
        trainer.logger.log_hyperparams(training | identity, {f"hparams/{k}": v for k, v in metrics.items()
                                                             if k.startswith("val_")})
        report = read_json(os.path.join(os.path.dirname(tokenizer_file), "tokenizer_report.json"))
        scored, total = len(datamodule.val_set), datamodule.val_sentences
        validation = (f"all {total:,} validation sentences" if scored == total else
                      f"{scored:,} of {total:,} validation sentences") + f", fixed masks (seed {cfg.seed})"
        card = model_card(module.config, metrics, corpus_manifest(cfg.train_path), report, training,
                          model_name(cfg.job_dir), validation, cfg.language.split(",") if cfg.language else None,
                          cfg.init_from)
        export_model(module.model, tokenizer, os.path.join(cfg.job_dir, "model"), {"README.md": card})
        write_json_atomic(os.path.join(cfg.job_dir, "final_metrics.json"), metrics)
    return metrics
