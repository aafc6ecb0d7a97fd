"""Step 3's settings: TrainingConfig, its defaults and checks, and what must match for a run to be resumed."""
import re
from dataclasses import dataclass, replace

from common import UsageError
from training.schedule import SCHEDULES

# The choices and defaults of run_training.py's flags live here, in a module that imports no torch, so that
# --help and a mistyped flag answer at once; model.py and masking.py take theirs from here.
# hidden size, layers, heads, feed-forward size. `base` is the 2021 demo's model.
MODEL_SIZES = {
    "mini": (128, 4, 2, 512),
    "tiny": (256, 4, 4, 1024),
    "small": (512, 4, 8, 2048),
    "base": (768, 4, 12, 3072),
}
# The preset a --max-time budget gets when --model-size is not given, per kind of device: (budget up to, in
# seconds, preset, why), the first row whose budget is at least the run's. The measurements are in
# docs/benchmarks.md ("The budget chooses the size").
SIZE_BY_BUDGET = {
    "cpu": (  # float32
        (300, "mini", "the lowest loss at 30, 60, 150 and 300 s on real titles, reviews and prose, against tiny "
                      "(tied with it on reviews at 300 s)"),
        (float("inf"), "tiny", "past 300 s, not measured against mini (whose lead over tiny shrank with the budget on "
                               "reviews); tiny beat small at 30-150 s"),
    ),
    "cpu-bf16": ((float("inf"), "tiny", "base reached 7.09 in 534 s where tiny reached 4.4 in 600 s (mini not "
                                        "measured with bf16)"),),
    "gpu": ((float("inf"), "base", "the demo's size: budgets were not measured on GPUs"),),
}
DEFAULT_MODEL_SIZE = "base"  # without --max-time: the 2021 demo's model
MAX_POSITIONS = 514  # RoBERTa: 512 tokens, plus the padding index and the offset it causes
MASK_RULES = ("80-10-10", "all-mask")
OUTPUT_BIASES = ("unigram", "zero")

DEFAULT_MAX_STEPS = 1000
DEFAULT_SCHEDULE, DEFAULT_WARMUP_RATIO = "wsd", 0.06  # chosen by measurement: see docs/design.md's schedule table
# Peak learning rate when --lr is not given. tiny: 1e-3 reached a lower loss than 5e-4 within a time budget on
# real titles; mini: 2e-3 beat 1e-3 at 60 s on review text; small and base keep 5e-4, since base at 1e-3
# (batch 8) stayed on the unigram plateau with a rising training loss over 220 steps (docs/benchmarks.md).
DEFAULT_LR = {"mini": 2e-3, "tiny": 1e-3, "small": 5e-4, "base": 5e-4}
# Share of tokens masked in training when --mlm-probability is not given. 30% (MosaicBERT's, ModernBERT's)
# reached a lower validation loss (scored at 15%) than 15% at 60, 150 and 600 s on real product titles,
# although it trains 25-40% fewer tokens/s; on review text it tied at 60 and 150 s, won at 600 s (docs/benchmarks.md).
DEFAULT_MLM_PROBABILITY = 0.3
# What must match for a checkpoint to be resumed into the current run.
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
    model_size: str | None = None  # None: chosen by --max-time (choose_model_size), else DEFAULT_MODEL_SIZE
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    dropout: float = 0.0
    output_bias: str | None = None  # None: unigram for a fresh model, a resumed run's own (job.train)
    attention: str = "auto"
    max_steps: int | None = None  # None: DEFAULT_MAX_STEPS, or no limit when max_time is given
    max_time: str | None = None
    batch_size: int | None = None  # None: the device plan's (8 sequences on CPUs, 32 on GPUs)
    max_seq_length: int = 128
    mlm_probability: float | None = None  # None: DEFAULT_MLM_PROBABILITY
    mask_rule: str = "80-10-10"
    packing: bool = True
    attend_across_sentences: bool = False
    lr: float | None = None  # None: DEFAULT_LR of the model size
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
        (cfg.model_size is None or cfg.model_size in MODEL_SIZES, f"--model-size must be one of {', '.join(MODEL_SIZES)}"),
        (cfg.batch_size is None or cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
        (cfg.max_steps is None or cfg.max_steps >= 1, f"--max-steps must be at least 1, got {cfg.max_steps}"),
        (cfg.lr_schedule in SCHEDULES, f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {cfg.lr_schedule!r}"),
        (cfg.warmup_steps is None or cfg.warmup_steps >= 0, f"--warmup-steps must be 0 or more, got {cfg.warmup_steps}"),
        (cfg.warmup_steps is None or cfg.warmup_ratio is None, "give --warmup-ratio or --warmup-steps, not both"),
        (0 < cfg.decay_ratio <= 1, f"--decay-ratio must be in (0, 1], got {cfg.decay_ratio}"),
        (cfg.accumulate_grad_batches >= 1,
         f"--accumulate-grad-batches must be at least 1, got {cfg.accumulate_grad_batches}"),
        (cfg.lr is None or cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (cfg.mlm_probability is None or 0 < cfg.mlm_probability < 1, f"--mlm-probability must be in (0, 1), got {cfg.mlm_probability}"),
        (cfg.output_bias is None or cfg.output_bias in OUTPUT_BIASES, f"--output-bias must be one of {', '.join(OUTPUT_BIASES)}, got {cfg.output_bias!r}"),
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
    size = cfg.model_size or (DEFAULT_MODEL_SIZE if cfg.max_time is None else None)  # None: chosen later by the device
    if size is not None:
        hidden, heads = cfg.hidden_size or MODEL_SIZES[size][0], cfg.num_heads or MODEL_SIZES[size][2]
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
        import torch

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


def choose_model_size(cfg: TrainingConfig, device_kind: str) -> tuple[TrainingConfig, str]:
    """The config with its preset set, and why: --model-size as given; else, under --max-time, the row of
    SIZE_BY_BUDGET for this kind of device ("cpu", "cpu-bf16" or "gpu"); else DEFAULT_MODEL_SIZE."""
    if cfg.model_size is not None:
        return cfg, f"--model-size {cfg.model_size}"
    seconds = parse_max_time(cfg.max_time)
    if seconds is None:
        return replace(cfg, model_size=DEFAULT_MODEL_SIZE), f"no --max-time: {DEFAULT_MODEL_SIZE}, the default"
    _, size, why = next(row for row in SIZE_BY_BUDGET[device_kind] if seconds <= row[0])
    return replace(cfg, model_size=size), f"--max-time {seconds:.0f} s on a {device_kind} device: {size}, {why}"


def resolve_defaults(cfg: TrainingConfig, plan_batch_size: int) -> TrainingConfig:
    """The config with --batch-size, --lr and --mlm-probability filled in where not given: the device plan's
    batch (8 sequences on CPUs, 32 on GPUs), the model size's rate and DEFAULT_MLM_PROBABILITY."""
    def given(value, default):
        return default if value is None else value

    size = cfg.model_size or DEFAULT_MODEL_SIZE  # None with --init-from: its rate is base's
    return replace(cfg, batch_size=given(cfg.batch_size, plan_batch_size), lr=given(cfg.lr, DEFAULT_LR[size]),
                   mlm_probability=given(cfg.mlm_probability, DEFAULT_MLM_PROBABILITY))
