"""Step 3: train a RoBERTa masked language model on the corpus, with PyTorch Lightning.

    python training/run_training.py --job-dir runs/demo --path-to-train-set data/corpus/train \\
        --path-to-val-set data/corpus/validation --path-to-tokenizer data/tokenizer --model-size tiny

Writes JOB/checkpoints/last.ckpt, JOB/tensorboard/, JOB/model/ (for transformers.pipeline("fill-mask"))
and JOB/final_metrics.json. Re-running with the same --job-dir resumes from the last checkpoint, where the
data left off, also with other --devices, --num-nodes, --batch-size or --accumulate-grad-batches. SIGTERM,
SIGINT or SIGUSR1 sent to any process saves that checkpoint on every rank and exits with 128 + the signal.
Under torchrun or srun, pass --devices (processes per node) and --num-nodes to match the launcher.
"""
import argparse
import json
import logging
import os
import sys


try:  # common first: it checks that the packages Python imports are this checkout's
    import common
except ImportError:
    sys.exit("error: this project is not installed; run `pip install -e .` in its checkout (docs/troubleshooting.md)")
common.check_own_checkout(__file__)

# Light modules only up to the parse: training.job imports torch, Lightning and transformers (10-15 s on 2 cores),
# which --help and a mistyped flag should not wait for.
from common import ArgumentParser, run_main
from training.config import (DEFAULT_LR, DEFAULT_MAX_STEPS, DEFAULT_MLM_PROBABILITY, DEFAULT_SCHEDULE,
                             DEFAULT_WARMUP_RATIO, MASK_RULES, MODEL_SIZES, OUTPUT_BIASES, TrainingConfig,
                             validate_config)
from training.schedule import SCHEDULES, WARMUP_CAP


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--job-dir", required=True, help="where checkpoints, TensorBoard logs, the model and metrics go")
    io.add_argument("--path-to-train-set", default="data/corpus/train",
                    help="training split: a directory of .txt shards, a file or a glob (default: %(default)s)")
    io.add_argument("--path-to-val-set", default="data/corpus/validation",
                    help="validation split, same forms (default: %(default)s)")
    io.add_argument("--path-to-tokenizer",
                    help="directory with step 2's tokenizer.json (default: data/tokenizer, or the --init-from "
                         "model's own tokenizer)")
    io.add_argument("--init-from", metavar="DIR",
                    help="continue pretraining from a local RoBERTa masked-LM directory (an exported JOB/model or a "
                         "Hugging Face one); its config replaces the model flags")
    io.add_argument("--language", metavar="CODE[,CODE]",
                    help="language(s) of the text, ISO 639-1 (e.g. en), written into the model card's front matter "
                         "for the Hugging Face Hub (default: unset)")
    io.add_argument("--cache-dir", help="where tokenised splits are cached (default: JOB/cache); share it between jobs")
    m = p.add_argument_group("model")
    m.add_argument("--model-size", choices=list(MODEL_SIZES),
                   help="preset (hidden/layers/heads): mini 128/4/2, tiny 256/4/4, small 512/4/8, base 768/4/12 "
                        "(default: with --max-time, the size measured to reach the lowest loss at that budget on this "
                        "kind of device, logged and recorded in run_config.json (docs/training.md); without it, base)")
    m.add_argument("--hidden-size", type=int, help="override the preset's hidden size")
    m.add_argument("--num-layers", type=int, help="override the preset's number of layers")
    m.add_argument("--num-heads", type=int, help="override the preset's number of attention heads")
    m.add_argument("--dropout", type=float, default=0.0,
                   help="hidden and attention dropout while pretraining; 0 as in ModernBERT and Cramming: faster, and "
                        "lower loss when the data is seen about once; RoBERTa used 0.1 (default: %(default)s)")
    m.add_argument("--output-bias", choices=OUTPUT_BIASES,
                   help="initial bias of the output layer of a fresh model: unigram = the log of the training tokens' "
                        "frequencies, so the model starts at their entropy instead of spending its first hundreds of "
                        "steps getting there; zero = RoBERTa's; not used with --init-from (default: unigram; a resumed "
                        "run records its own)")
    m.add_argument("--attention", choices=["auto", "sdpa", "eager"], default="auto",
                   help="attention implementation: auto = PyTorch SDPA on GPUs, eager on CPUs (measured faster there "
                        "for short sequences) (default: %(default)s)")
    t = p.add_argument_group("training")
    t.add_argument("--max-steps", type=int,
                   help=f"optimizer steps to train for (default: {DEFAULT_MAX_STEPS}; with --max-time, no limit)")
    t.add_argument("--max-time",
                   help="training-time budget, seconds or DD:HH:MM:SS: the learning-rate schedule is laid out over it "
                        "(with --max-steps too, over whichever ends first) and the run stops cleanly when it is spent, "
                        "then validates and exports; start-up and validations are not counted; kept across resumes")
    t.add_argument("--batch-size", type=int,
                   help="sequences per device and step (default: 8 on CPUs, where small batches give more steps for "
                        "the same tokens, 32 on GPUs)")
    t.add_argument("--max-seq-length", type=int, default=128,
                   help="tokens per sequence, <s> and </s> included, at most 512 (default: %(default)s)")
    t.add_argument("--no-packing", dest="packing", action="store_false",
                   help="one sentence per sequence (the 2021 demo) instead of packing sentences into full blocks")
    t.add_argument("--attend-across-sentences", action="store_true",
                   help="let sentences in a packed block attend to each other (RoBERTa's FULL-SENTENCES), for text "
                        "files whose consecutive lines belong together; step 1's lines are independent, so by default "
                        "each sentence attends only to itself")
    t.add_argument("--mlm-probability", type=float,
                   help="share of tokens masked in training; validation always masks 15%%, so runs with other rates "
                        f"compare (default: {DEFAULT_MLM_PROBABILITY}, which reached a lower loss than 0.15 at 60, "
                        "150 and 600 s on product titles, and tied with it at 60 and 150 s on review text, lower at 600 s)")
    t.add_argument("--mask-rule", choices=MASK_RULES, default="80-10-10",
                   help="what a chosen token becomes in training: 80-10-10 = <mask> 80%%, a random token 10%%, itself "
                        "10%% (BERT, RoBERTa); all-mask = always <mask>; validation uses 80-10-10 (default: %(default)s)")
    t.add_argument("--lr", type=float,
                   help="peak learning rate of AdamW (default: " + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items())
                   + ")")
    t.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW weight decay, not applied to biases and LayerNorm (default: %(default)s)")
    t.add_argument("--lr-schedule", choices=SCHEDULES, default=DEFAULT_SCHEDULE,
                   help="after warmup: linear or cosine decay to 0 at the end of the budget, wsd (warmup, stable, "
                        "then linear decay over the last --decay-ratio), or constant (default: %(default)s, the best "
                        "at 150 s and 600 s in docs/design.md's measurements)")
    t.add_argument("--warmup-ratio", type=float,
                   help=f"share of the budget (--max-steps or --max-time) with linear warmup (default: {DEFAULT_WARMUP_RATIO})")
    t.add_argument("--warmup-steps", type=int,
                   help=f"linear warmup over this many steps instead, but at most {WARMUP_CAP * 100:.0f}%% of the budget")
    t.add_argument("--decay-ratio", type=float, default=0.2,
                   help="wsd: share of the budget at the end over which the rate decays to 0 (default: %(default)s)")
    t.add_argument("--accumulate-grad-batches", type=int, default=1, metavar="K",
                   help="add up the gradients of K batches per optimizer step: an effective batch of --batch-size x K x "
                        "devices x nodes sequences; the schedule counts optimizer steps (default: %(default)s)")
    t.add_argument("--gradient-clip-val", type=float, default=1.0, help="clip gradient norm; 0 = off (default: %(default)s)")
    t.add_argument("--max-bad-steps", type=int, default=10,
                   help="stop after this many consecutive steps with a NaN/inf loss (each is skipped) (default: %(default)s)")
    t.add_argument("--seed", type=int, default=42, help="random seed; also fixes the validation masks (default: %(default)s)")
    t.add_argument("--validate-every-n-steps", type=int, default=500, help="validation interval, in optimizer steps (default: %(default)s)")
    t.add_argument("--max-val-sentences", type=int, default=10_000,
                   help="validate on this many sentences of the validation split, the same ones with the same masks "
                        "every time (chosen by --seed); 0 = the whole split (default: %(default)s)")
    t.add_argument("--checkpoint-every-n-steps", type=int, default=500,
                   help="interval of JOB/checkpoints/last.ckpt, in optimizer steps; at a step that also "
                        "validates, written after the validation (default: %(default)s)")
    t.add_argument("--log-every-n-steps", type=int, default=10, help="TensorBoard interval (default: %(default)s)")
    w = p.add_argument_group("watching the model in TensorBoard")
    w.add_argument("--fill-mask-samples", type=int, default=8,
                   help="at each validation, a table (TEXT tab) of this many validation sentences, chosen by --seed, "
                        "with one word masked, the expected word and the top 3 predictions; 0 = off (default: %(default)s)")
    w.add_argument("--watch-texts", metavar="FILE",
                   help="use your own lines instead, one <mask> in each (one text per line)")
    w.add_argument("--log-embeddings", type=int, default=0, metavar="N",
                   help="at the end, put the input embeddings of the N most frequent tokens in TensorBoard's "
                        "PROJECTOR tab, labelled with the tokens; 0 = off (default: %(default)s)")
    t.add_argument("--num-workers", type=int,
                   help="dataloader worker processes (default: 0 on CPUs, where workers take cores from training; "
                        "on GPUs up to 4 per process, so batches are collated while the GPU computes)")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder (pays off on long GPU runs; the first steps are slow)")
    r = p.add_mutually_exclusive_group()
    r.add_argument("--resume", dest="resume", action="store_true", default=None,
                   help="continue from JOB/checkpoints/last.ckpt (the default whenever it exists)")
    r.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over; an earlier run in --job-dir is moved to JOB/previous-<time>-<suffix>/")
    h = p.add_argument_group("hardware (passed to Lightning)")
    h.add_argument("--accelerator", default="auto", help="cpu, gpu, auto... (default: %(default)s)")
    h.add_argument("--devices", default="auto", help="number of devices, a list, or auto (default: %(default)s)")
    h.add_argument("--num-nodes", type=int, default=1, help="machines taking part (default: %(default)s)")
    h.add_argument("--strategy", default="auto",
                   help="auto (one device) or ddp (several devices or nodes); other Lightning strategies are "
                        "passed on with a warning: they are untested here (default: %(default)s)")
    h.add_argument("--precision", default="auto",
                   help="auto = bf16-mixed on Ampere or newer GPUs, 16-mixed on older ones, bf16-mixed on CPUs "
                        "where it measures faster, else 32-true; or any Lightning precision (default: %(default)s)")
    h.add_argument("--peak-tflops", type=float,
                   help="the device's peak dense TFLOP/s at the training precision, for the MFU curve (default: "
                        "known for H100 and H200 and the GPUs Lightning lists)")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    values = vars(args).copy()
    return TrainingConfig(
        job_dir=values.pop("job_dir"), train_path=values.pop("path_to_train_set"),
        val_path=values.pop("path_to_val_set"), tokenizer_path=values.pop("path_to_tokenizer"),
        progress=not values.pop("no_progress"), **values,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    validate_config(config)  # train() checks again; here a bad value answers before torch is imported
    from training.job import train

    metrics = train(config)
    print(json.dumps(metrics))


if __name__ == "__main__":
    sys.exit(run_main(main))
