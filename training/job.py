"""Step 3 end to end: check inputs, train (or resume), validate, export, write final metrics."""
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from common import Interrupted, UsageError
from training.data import MASK_RULES, MaskedLMDataModule, file_sha256, files_fingerprint
from training.export import export_model
from training.model_card import corpus_manifest, model_card, model_name, read_json
from training.model import MAX_POSITIONS, MODEL_SIZES, MaskedLMModule, perplexity
from training.schedule import SCHEDULES
from training.devices import apply_plan, check_strategy, device_type, plan_for_device
from training.trainer_setup import StopRequested, StopSignals, build_trainer, tensorboard_logger
from training.watch import FillMaskSamples, log_token_embeddings, read_watch_texts

log = logging.getLogger("training")
# What must match for a checkpoint to be resumed into the current run.
DEFAULT_MAX_STEPS = 1000
DEFAULT_SCHEDULE, DEFAULT_WARMUP_RATIO = "wsd", 0.06  # chosen by measurement: see the README's schedule table
RUN_IDENTITY = ("model_size", "hidden_size", "num_layers", "num_heads", "max_seq_length", "packing", "seed",
                "vocab_size", "tokenizer_sha256", "train_data")


@dataclass
class TrainingConfig:
    job_dir: str
    train_path: str
    val_path: str
    tokenizer_path: str | None = None  # default: data/tokenizer, or the --init-from model's own tokenizer
    init_from: str | None = None
    language: str | None = None  # for the model card: ISO 639-1 codes, comma-separated
    model_size: str = "base"
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    dropout: float = 0.0
    attention: str = "auto"
    max_steps: int | None = None  # None: DEFAULT_MAX_STEPS, or no limit when max_time is given
    max_time: str | None = None
    batch_size: int = 32
    max_seq_length: int = 128
    mlm_probability: float = 0.15
    mask_rule: str = "80-10-10"
    packing: bool = True
    attend_across_sentences: bool = False
    lr: float = 5e-4
    weight_decay: float = 0.01
    lr_schedule: str = DEFAULT_SCHEDULE
    warmup_ratio: float | None = None  # None: DEFAULT_WARMUP_RATIO unless warmup_steps is given
    warmup_steps: int | None = None
    decay_ratio: float = 0.2
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    max_bad_steps: int = 10
    seed: int = 42
    validate_every_n_steps: int = 500
    max_val_sentences: int = 10_000
    fill_mask_samples: int = 8
    watch_texts: str | None = None
    log_embeddings: int = 0
    checkpoint_every_n_steps: int = 500
    log_every_n_steps: int = 10
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    num_workers: int | None = None
    compile: bool = False
    peak_tflops: float | None = None
    cache_dir: str | None = None
    resume: bool | None = None  # None: resume when JOB/checkpoints/last.ckpt exists
    progress: bool = True


def validate_config(cfg: TrainingConfig) -> None:
    checks = [
        (cfg.model_size in MODEL_SIZES, f"--model-size must be one of {', '.join(MODEL_SIZES)}"),
        (cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
        (cfg.max_steps is None or cfg.max_steps >= 1, f"--max-steps must be at least 1, got {cfg.max_steps}"),
        (cfg.lr_schedule in SCHEDULES, f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {cfg.lr_schedule!r}"),
        (cfg.warmup_steps is None or cfg.warmup_steps >= 0, f"--warmup-steps must be 0 or more, got {cfg.warmup_steps}"),
        (cfg.warmup_steps is None or cfg.warmup_ratio is None, "give --warmup-ratio or --warmup-steps, not both"),
        (0 < cfg.decay_ratio <= 1, f"--decay-ratio must be in (0, 1], got {cfg.decay_ratio}"),
        (cfg.accumulate_grad_batches >= 1,
         f"--accumulate-grad-batches must be at least 1, got {cfg.accumulate_grad_batches}"),
        (cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (0 < cfg.mlm_probability < 1, f"--mlm-probability must be in (0, 1), got {cfg.mlm_probability}"),
        (cfg.mask_rule in MASK_RULES, f"--mask-rule must be one of {', '.join(MASK_RULES)}, got {cfg.mask_rule!r}"),
        (8 <= cfg.max_seq_length <= MAX_POSITIONS - 2,
         f"--max-seq-length must be between 8 and {MAX_POSITIONS - 2} (the model's position embeddings), "
         f"got {cfg.max_seq_length}"),
        (cfg.validate_every_n_steps >= 1 and cfg.checkpoint_every_n_steps >= 1,
         "--validate-every-n-steps and --checkpoint-every-n-steps must be at least 1"),
        (cfg.max_bad_steps >= 1, f"--max-bad-steps must be at least 1, got {cfg.max_bad_steps}"),
        (0 <= cfg.seed < 2**32, f"--seed must be between 0 and {2**32 - 1} (what numpy accepts), got {cfg.seed}"),
        (0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}"),
        (cfg.warmup_ratio is None or 0 <= cfg.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}"),
        (cfg.num_workers is None or cfg.num_workers >= 0, f"--num-workers must be at least 0, got {cfg.num_workers}"),
        (cfg.max_val_sentences >= 0, f"--max-val-sentences must be 0 (all) or more, got {cfg.max_val_sentences}"),
        (cfg.language is None or all(re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?", c) for c in cfg.language.split(",")),
         f"--language {cfg.language!r} is not a list of language codes; pass ISO 639-1 codes such as en or en,de"),
        (cfg.fill_mask_samples >= 0 and cfg.log_embeddings >= 0,
         "--fill-mask-samples and --log-embeddings must be 0 (off) or more"),
        (cfg.peak_tflops is None or cfg.peak_tflops > 0, f"--peak-tflops must be positive, got {cfg.peak_tflops}"),
        (all(v is None or v >= 1 for v in (cfg.hidden_size, cfg.num_layers, cfg.num_heads)),
         "--hidden-size, --num-layers and --num-heads must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    parse_max_time(cfg.max_time)
    hidden = cfg.hidden_size or MODEL_SIZES[cfg.model_size][0]
    heads = cfg.num_heads or MODEL_SIZES[cfg.model_size][2]
    if hidden % heads:
        raise UsageError(f"hidden size {hidden} is not divisible by {heads} heads; change --hidden-size or --num-heads")


def step_budget(cfg: TrainingConfig) -> int | None:
    """--max-steps as given; if not: no limit under --max-time (the clock ends the run), else 1000."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return None if cfg.max_time else DEFAULT_MAX_STEPS


def warmup_ratio(cfg: TrainingConfig) -> float:
    return cfg.warmup_ratio if cfg.warmup_ratio is not None else DEFAULT_WARMUP_RATIO


def local_processes(devices: str | int) -> int:
    """Training processes on this machine for --devices (a count, a list such as "0,1", or auto)."""
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return max(torch.cuda.device_count(), 1)
    if "," in text or text.startswith("["):
        return len([d for d in text.strip("[]").split(",") if d.strip()])
    return int(text) if text.isdigit() and int(text) > 0 else 1


def parse_max_time(value: str | None) -> float | None:
    """--max-time in seconds, given as seconds ("5400") or Lightning's DD:HH:MM:SS ("00:01:30:00")."""
    if value is None:
        return None
    try:
        if ":" not in value:
            seconds = float(value)
        else:
            days, hours, minutes, secs = (float(x) for x in value.split(":"))
            seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise UsageError(f"--max-time {value!r} is not a duration; give seconds (5400) or DD:HH:MM:SS (00:01:30:00)")
    return seconds


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


def resume_checkpoint(cfg: TrainingConfig) -> str | None:
    """JOB/checkpoints/last.ckpt when this run resumes from it; only reads the job directory."""
    last = os.path.join(cfg.job_dir, "checkpoints", "last.ckpt")
    if cfg.resume is False or not os.path.isfile(last):
        return None
    return last


def prepare_job_dir(cfg: TrainingConfig, identity: dict[str, Any]) -> str | None:
    """Create the job directory (global rank 0 only); return the checkpoint to resume from, if any."""
    try:
        os.makedirs(cfg.job_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=cfg.job_dir).close()  # a unique probe: processes never collide
    except OSError as e:
        raise UsageError(f"cannot write to --job-dir {cfg.job_dir!r} ({e.strerror}); choose a writable directory") from None
    last = os.path.join(cfg.job_dir, "checkpoints", "last.ckpt")
    run_file = os.path.join(cfg.job_dir, "run_config.json")
    previous = None
    if os.path.isfile(run_file):
        with open(run_file) as f:
            previous = json.load(f)
    if cfg.resume is False and (os.path.exists(last) or previous):
        archive = tempfile.mkdtemp(prefix=f"previous-{time.strftime('%Y%m%d-%H%M%S')}-", dir=cfg.job_dir)
        for name in ("checkpoints", "tensorboard", "model", "final_metrics.json", "run_config.json"):
            if os.path.exists(os.path.join(cfg.job_dir, name)):
                shutil.move(os.path.join(cfg.job_dir, name), archive)
        log.warning("--no-resume: the earlier run in %s was moved to %s", cfg.job_dir, archive)
        previous = None
    resume_from = resume_checkpoint(cfg)
    if cfg.resume and resume_from is None:
        raise UsageError(f"--resume given but {last!r} does not exist; drop --resume to start a new run")
    if previous:
        changed = [k for k in RUN_IDENTITY if k in previous.get("identity", {})
                   and previous["identity"][k] != identity.get(k)]
        if changed:
            raise UsageError(
                f"--job-dir {cfg.job_dir!r} holds a run with a different {', '.join(changed)}; "
                "use another --job-dir, or --no-resume to archive that run and start over"
            )
    with open(run_file, "w") as f:
        json.dump({"identity": identity, "config": asdict(cfg)}, f, indent=2)
    if resume_from:
        log.warning("resuming from %s", resume_from)
    return resume_from


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_library_noise() -> None:
    """Hide library messages that are advertising or deprecation chatter, not information about this run."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")  # validation sums are reduced over ranks first


def _checkpoint_step(path: str) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
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
    identity = {k: getattr(cfg, k) for k in RUN_IDENTITY[:7]}  # those set by flags
    if pretrained is not None:
        c = pretrained.config
        identity.update(model_size="init_from", hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
                        num_heads=c.num_attention_heads)
    identity.update(vocab_size=len(tokenizer), tokenizer_sha256=file_sha256(tokenizer_file))
    check_strategy(cfg.strategy)
    plan = plan_for_device(device_type(cfg.accelerator), cfg.precision, cfg.attention, cfg.num_workers,
                           processes_per_node=local_processes(cfg.devices), log_every_n_steps=cfg.log_every_n_steps)
    apply_plan(plan)
    log.info("device plan: %s", plan)
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
    trainer, clock, last = build_trainer(
        cfg.job_dir, plan, max_steps, cfg.validate_every_n_steps, cfg.checkpoint_every_n_steps, cfg.accelerator,
        cfg.devices, cfg.strategy, cfg.num_nodes, max_seconds, cfg.log_every_n_steps,
        cfg.gradient_clip_val, cfg.accumulate_grad_batches, cfg.progress,
        config=module.config, seq_len=cfg.max_seq_length, peak_tflops=cfg.peak_tflops, started=started,
        extra_callbacks=[FillMaskSamples(tokenizer, watch_texts, cfg.fill_mask_samples, cfg.seed)]
        if watch_texts or cfg.fill_mask_samples else [], signals=signals,
    )
    # Launchers (Lightning's, torchrun, srun) start this script once per process: global rank 0 alone prepares
    # the job directory; the others only read it, and reach the checkpoint after rank 0 has joined the process
    # group, so after it has finished (LastCheckpoint.setup checks that they agree).
    if trainer.is_global_zero:
        identity["train_data"] = files_fingerprint(datamodule.train_files)
        last.resume_from = prepare_job_dir(cfg, identity)
        trainer.logger = tensorboard_logger(cfg.job_dir, _checkpoint_step(last.resume_from) if last.resume_from else None)
    else:
        last.resume_from = resume_checkpoint(cfg)
        trainer.logger = tensorboard_logger(cfg.job_dir)  # writes nothing off rank 0
    effective_batch = cfg.batch_size * cfg.accumulate_grad_batches * trainer.world_size
    log.info("schedule: %s over %s; effective batch %d sequences (%d x %d accumulated x %d processes)",
             cfg.lr_schedule, " or ".join(x for x in (max_steps and f"{max_steps} steps",
                                                      max_seconds and f"{max_seconds:.0f} s of training") if x),
             effective_batch, cfg.batch_size, cfg.accumulate_grad_batches, trainer.world_size)
    module.elapsed_seconds = lambda: clock.budget_seconds  # the schedule reads the clock that stops the run
    try:
        with signals:
            trainer.fit(module, datamodule=datamodule, ckpt_path=last.resume_from, weights_only=False)  # our file
            # last.ckpt holds the final step, whatever the interval; a rerun after a kill during the final
            # validation or export (the fit loop then returns at once) comes here too, with the restored counts
            last.save(trainer)
    except StopRequested as stop:  # every rank saved the checkpoint at the same step
        if stop.signum == signal.SIGUSR1 and trainer.is_global_zero:
            requeue_slurm_job()
        raise Interrupted(f"by {signal.Signals(stop.signum).name} at step {trainer.global_step}; checkpoint in "
                          f"{last.path}; run the same command again to resume", stop.signum) from None
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
    }
    if trainer.is_global_zero:
        if cfg.log_embeddings:
            log_token_embeddings(module.model, tokenizer, datamodule.train_split, cfg.log_embeddings,
                                 trainer.logger.experiment, trainer.global_step)
        training = {k: getattr(cfg, k) for k in ("batch_size", "accumulate_grad_batches", "max_seq_length", "packing",
                                                 "attend_across_sentences", "mlm_probability", "mask_rule", "lr", "lr_schedule",
                                                 "warmup_steps", "decay_ratio", "weight_decay", "dropout", "seed")}
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
        with open(os.path.join(cfg.job_dir, "final_metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    return metrics
