"""Benchmark step 3 against the Hugging Face Trainer recipe (run_mlm.py) for the same training-time budget.

    python bench/train_vs_hf_trainer.py                       # generated corpus, 150 s and 600 s
    python bench/train_vs_hf_trainer.py --seconds 150 --try "--lr-schedule wsd" "--lr-schedule cosine"
    python bench/train_vs_hf_trainer.py --corpus-dir data/corpus --tokenizer data/tokenizer --seconds 600

Same corpus, tokenizer, model (tiny: hidden 256, 4 layers, 4 heads, feed-forward 1024), batch size
(32 sequences) and peak learning rate, each run in a fresh process for the same seconds of training:
  (a)  this project as a user with a time budget runs it: `--max-time SECONDS` and nothing else that
       shapes training (the schedule, warmup, precision, attention, packing are its defaults)
  (b1) transformers.Trainer + DataCollatorForLanguageModeling, line by line with dynamic padding
       (run_mlm.py --line_by_line, and the 2021 demo), with the RoBERTa config's defaults, 30 warmup
       steps, then linear decay over a horizon far beyond the budget (the Trainer has no time budget)
  (b2) the same Trainer with run_mlm.py's default grouping into 128-token blocks
  (a+) with --try: (a) again with each given set of extra flags, to compare against the defaults
Extra arguments after `--` go to (a) only, to measure one change at a time (e.g. -- --dropout 0.1).
Then every saved model is scored by one shared function on the same validation lines, one sentence per
sequence, with the same masked positions (fixed seed). Prints non-pad tokens/s, loss and the ratios,
for each budget.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP_STEPS = 30  # the Trainer recipes': they have no time budget to lay a schedule over
HORIZON = 1_000_000  # their schedule length: the budget ends long before, so the rate stays near the peak


def read_lines(directory: str) -> list[str]:
    lines = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".txt"):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                lines.extend(line.rstrip("\n") for line in f if line.strip())
    return lines


def run_hf_trainer(kind: str, corpus: str, tokenizer_dir: str, out: str, seconds: float, batch_size: int,
                   lr: float, seed: int) -> dict:
    """(b1) or (b2): the Trainer recipe, stopped after `seconds` of training; returns its throughput."""
    import datasets
    import torch
    from transformers import (AutoTokenizer, DataCollatorForLanguageModeling, RobertaForMaskedLM, Trainer,
                              TrainerCallback, TrainingArguments)

    from training.model import build_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    lines = read_lines(os.path.join(corpus, "train"))
    encoded = tokenizer(lines, truncation=True, max_length=128)["input_ids"]
    if kind == "b2":  # run_mlm.py's group_texts: concatenate everything, cut into 128-token blocks
        stream = [t for ids in encoded for t in ids]
        encoded = [stream[i : i + 128] for i in range(0, len(stream) - 127, 128)]
    train_set = datasets.Dataset.from_dict({"input_ids": encoded})
    masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    counted = {"tokens": 0}

    def collate(examples):
        batch = masker(examples)
        counted["tokens"] += int((batch["input_ids"] != tokenizer.pad_token_id).sum()) if "attention_mask" not in batch \
            else int(batch["attention_mask"].sum())
        return batch

    class StopAfter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started, counted["tokens"] = time.perf_counter(), 0

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.started >= seconds:
                control.should_training_stop = True
                self.elapsed = time.perf_counter() - self.started
                self.steps = state.global_step

    torch.manual_seed(seed)
    model = RobertaForMaskedLM(build_config(len(tokenizer), "tiny", pad_token_id=tokenizer.pad_token_id,
                                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    stop = StopAfter()
    arguments = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch_size, learning_rate=lr, max_steps=HORIZON,
        warmup_steps=WARMUP_STEPS, lr_scheduler_type="linear", weight_decay=0.01, adam_beta2=0.98, adam_epsilon=1e-6,
        max_grad_norm=1.0, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        dataloader_num_workers=0, use_cpu=True, seed=seed, disable_tqdm=True,
    )
    Trainer(model=model, args=arguments, train_dataset=train_set, data_collator=collate, callbacks=[stop]).train()
    model.save_pretrained(os.path.join(out, "model"))
    tokenizer.save_pretrained(os.path.join(out, "model"))
    return {"steps": stop.steps, "seconds": stop.elapsed, "tokens_per_second": counted["tokens"] / stop.elapsed}


def validation_loss(model_dir: str, tokenizer_dir: str, corpus: str, seed: int = 1234) -> float:
    """The shared score: mean masked-token cross-entropy over all validation lines, one sentence per
    sequence (128 tokens at most), each masked once by a generator keyed by seed and line (the masks of
    run_evaluation.py), in float32."""
    import tempfile

    from transformers import AutoTokenizer, RobertaForMaskedLM

    from training.evaluation import evaluate, validation_sample

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = RobertaForMaskedLM.from_pretrained(model_dir)
    model.set_attn_implementation("eager")
    with tempfile.TemporaryDirectory() as cache:
        sample = validation_sample(os.path.join(corpus, "validation"), tokenizer,
                                   os.path.join(tokenizer_dir, "tokenizer.json"), cache, seed=seed, max_sentences=0)
        return evaluate(model, sample, tokenizer.pad_token_id, 128, "32-true")["loss"]


def prepare_data(workdir: str, rows: int) -> tuple[str, str]:
    from corpus_throughput import generate  # the sibling benchmark's generator

    reviews = os.path.join(workdir, f"reviews_{rows}.tsv.gz")
    if not os.path.exists(reviews):
        generate(reviews, rows, seed=3)
    corpus, tokenizer = os.path.join(workdir, "corpus"), os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(corpus, "manifest.json")):
        subprocess.run([sys.executable, "corpus/run_corpus_generation.py", "--data-files", reviews,
                        "--text-column", "product_title,review_headline", "--output-dir", corpus, "--no-progress"],
                       cwd=REPO, check=True)
    if not os.path.exists(os.path.join(tokenizer, "tokenizer.json")):
        subprocess.run([sys.executable, "tokenizer/run_tokenizer_fitting.py", "--corpus-dir", f"{corpus}/train",
                        "--output-dir", tokenizer, "--no-progress"], cwd=REPO, check=True)
    return corpus, tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", help="step 1 output (default: generated from --rows reviews)")
    p.add_argument("--tokenizer", help="step 2 output (default: fitted on the corpus)")
    p.add_argument("--rows", type=int, default=300_000, help="reviews to generate (default: %(default)s)")
    p.add_argument("--seconds", type=float, nargs="+", default=[150, 600],
                   help="training budgets; each is a separate comparison (default: %(default)s)")
    p.add_argument("--try", dest="try_flags", nargs="*", default=[], metavar="FLAGS",
                   help='more (a) runs, each with these run_training.py flags, e.g. "--lr-schedule wsd"')
    p.add_argument("--skip-trainer", action="store_true", help="only (a) and its --try variants (a schedule sweep)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", default="/tmp/bench_train", help="scratch directory (default: %(default)s)")
    p.add_argument("--hf", choices=["b1", "b2"], help=argparse.SUPPRESS)  # internal: one Trainer run
    p.add_argument("extra", nargs="*", help="after --: more run_training.py flags for (a)")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.hf:
        result = run_hf_trainer(args.hf, args.corpus_dir, args.tokenizer, os.path.join(args.workdir, args.hf),
                                args.seconds[0], args.batch_size, args.lr, args.seed)
        print(json.dumps(result))
        return
    corpus, tokenizer = (args.corpus_dir, args.tokenizer) if args.corpus_dir else prepare_data(args.workdir, args.rows)
    for seconds in args.seconds:
        compare(corpus, tokenizer, seconds, args)


def run_project(name: str, corpus: str, tokenizer: str, seconds: float, args: argparse.Namespace,
                flags: list[str]) -> dict:
    """(a): run_training.py with --max-time and the comparison's fixed model size, batch and rate."""
    job = os.path.join(args.workdir, f"{name}-{seconds:g}")
    subprocess.run(["rm", "-rf", job])
    subprocess.run([sys.executable, "training/run_training.py", "--job-dir", job, "--path-to-train-set",
                    f"{corpus}/train", "--path-to-val-set", f"{corpus}/validation", "--path-to-tokenizer", tokenizer,
                    "--model-size", "tiny", "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                    "--max-time", str(seconds), "--seed", str(args.seed), "--accelerator", "cpu", "--no-progress",
                    *flags], cwd=REPO, check=True, capture_output=True)
    metrics = json.load(open(os.path.join(job, "final_metrics.json")))
    return {"steps": metrics["global_step"], "seconds": metrics["train_seconds"],
            "tokens_per_second": metrics["train_tokens_per_second"], "model": os.path.join(job, "model")}


def compare(corpus: str, tokenizer: str, seconds: float, args: argparse.Namespace) -> None:
    results = {"a  (this project, --max-time)": run_project("a", corpus, tokenizer, seconds, args, args.extra)}
    for i, variant in enumerate(args.try_flags):
        results[f"a+ {variant}"] = run_project(f"a{i}", corpus, tokenizer, seconds, args, shlex.split(variant))
    trainer_runs = () if args.skip_trainer else (("b1", "b1 (Trainer, line by line)"),
                                                 ("b2", "b2 (Trainer, 128-token groups)"))
    for kind, name in trainer_runs:
        out = subprocess.run([sys.executable, __file__, "--hf", kind, "--corpus-dir", corpus, "--tokenizer", tokenizer,
                              "--seconds", str(seconds), "--batch-size", str(args.batch_size), "--lr",
                              str(args.lr), "--seed", str(args.seed), "--workdir", args.workdir],
                             cwd=REPO, check=True, capture_output=True, text=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        results[name]["model"] = os.path.join(args.workdir, kind, "model")
    for r in results.values():
        r["val_loss"] = validation_loss(r["model"], tokenizer, corpus)
    print(f"\n== budget {seconds:g} s ==\n{'run':<40}{'steps':>7}{'seconds':>9}{'tokens/s':>11}{'val loss':>10}")
    for name, r in results.items():
        print(f"{name:<40}{r['steps']:>7}{r['seconds']:>9.1f}{r['tokens_per_second']:>11,.0f}{r['val_loss']:>10.3f}")
    if args.skip_trainer:
        return
    a, b1, b2 = (results[k] for k in list(results)[:1] + ["b1 (Trainer, line by line)", "b2 (Trainer, 128-token groups)"])
    with open(os.path.join(a["model"], "README.md")) as f:  # the model card lists what (a) ran with
        chosen = [line[2:].strip() for line in f
                  if line.startswith(("- precision:", "- attention:", "- dropout:", "- lr_schedule:", "- warmup_ratio:"))]
    print(f"\n(a) ran with {', '.join(chosen)}")
    speed_b1, speed_b2 = a["tokens_per_second"] / b1["tokens_per_second"], a["tokens_per_second"] / b2["tokens_per_second"]
    best = min(r["val_loss"] for name, r in results.items() if name.startswith("a"))
    print(f"tokens/s: {speed_b1:.2f}x (b1), {speed_b2:.2f}x (b2); "
          f"val loss: a {a['val_loss']:.3f} vs b1 {b1['val_loss']:.3f}, b2 {b2['val_loss']:.3f}, best (a) variant {best:.3f}")
    print(f"targets: 6x b1 {'met' if speed_b1 >= 6 else 'NOT met'}, 2.5x b2 {'met' if speed_b2 >= 2.5 else 'NOT met'}, "
          f"lower loss than both {'met' if a['val_loss'] < min(b1['val_loss'], b2['val_loss']) else 'NOT met'}, "
          f"within 0.1 of the best variant {'met' if a['val_loss'] - best <= 0.1 else 'NOT met'}", flush=True)

if __name__ == "__main__":
    main()
