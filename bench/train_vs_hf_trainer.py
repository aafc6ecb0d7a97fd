"""Benchmark step 3 against the Hugging Face Trainer recipe (run_mlm.py): quality for the same training
time, and time to the Trainer's quality.

    python bench/train_vs_hf_trainer.py                       # generated corpus, 60, 150 and 600 s
    python bench/train_vs_hf_trainer.py --corpus-dir data/corpus --tokenizer data/tokenizer   # your text
    python bench/train_vs_hf_trainer.py --skip-trainer --seconds 150 --repeats 2 --try "--mlm-probability 0.15"
    python bench/train_vs_hf_trainer.py --text-file reviews.txt --vocab-size 8000 --seconds 30 60 150 600

Same corpus and tokenizer, each run in a fresh process for the same seconds of training:
  (a)  this project as a user with a time budget runs it: `--max-time SECONDS` and nothing else that shapes
       training (model size, batch, rate, masking, schedule, precision, output bias are its defaults; the
       budget chooses the size, SIZE_BY_BUDGET in training/config.py); its MFU and the step it left the
       unigram plateau are printed too
  (b1) transformers.Trainer + DataCollatorForLanguageModeling training tiny (hidden 256, 4 layers, 4 heads),
       line by line with dynamic padding (run_mlm.py --line_by_line, and the 2021 demo), batch 32, its tuned
       rate 5e-4, the RoBERTa config's defaults, 30 warmup steps, then linear decay over a horizon far beyond
       the budget
  (b2) the same Trainer with run_mlm.py's default grouping into 128-token blocks
  (a+) with --try: (a) again with each given set of extra flags (a sweep), --repeats times with seeds
       --seed, --seed+1, ...: the table gives each setting's mean loss and spread (max - min) per budget
Every saved model is scored by one shared function on all validation lines, one sentence per sequence,
15% masked by the 80/10/10 rule at fixed positions (seeded). Then the time to quality: the smallest
--max-time at which (a) reaches (b1)'s loss at --reference-seconds (600), found by bisection over
budgets (each a fresh run, since the schedule is laid out over the budget), and 600 / that time.
With --text-file (one text a line, e.g. real text you fetched) steps 1 and 2 run on it first, with step 2's
--vocab-size, into --workdir; the table then has one row per corpus and vocabulary when run once per pair.
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


def prepare_text(workdir: str, text_file: str, vocab_size: int) -> tuple[str, str]:
    """Steps 1 and 2 with defaults on a text file (one text a line), step 2 at `vocab_size`."""
    name = f"{os.path.splitext(os.path.basename(text_file))[0]}-{os.path.getsize(text_file)}"  # another file: new
    corpus, tokenizer = os.path.join(workdir, f"{name}-corpus"), os.path.join(workdir, f"{name}-tokenizer-{vocab_size}")
    if not os.path.exists(os.path.join(corpus, "manifest.json")):
        subprocess.run([sys.executable, "corpus/run_corpus_generation.py", "--data-files", text_file,
                        "--output-dir", corpus, "--no-progress"], cwd=REPO, check=True)
    if not os.path.exists(os.path.join(tokenizer, "tokenizer.json")):
        subprocess.run([sys.executable, "tokenizer/run_tokenizer_fitting.py", "--corpus-dir", f"{corpus}/train",
                        "--vocab-size", str(vocab_size), "--output-dir", tokenizer, "--no-progress"], cwd=REPO, check=True)
    return corpus, tokenizer


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
    p.add_argument("--text-file", help="run steps 1 and 2 on this text file (one text a line) instead")
    p.add_argument("--vocab-size", type=int, default=30_000, help="step 2's, with --text-file (default: %(default)s)")
    p.add_argument("--seconds", type=float, nargs="*", default=[60, 150, 600],
                   help="training budgets of (a); each is a separate comparison; none with --trainer-seconds runs "
                        "the Trainer alone (default: %(default)s)")
    p.add_argument("--try", dest="try_flags", nargs="*", default=[], metavar="FLAGS",
                   help='more (a) runs, each with these run_training.py flags, e.g. "--mlm-probability 0.15"')
    p.add_argument("--repeats", type=int, default=1,
                   help="(a) runs per setting and budget, seeds --seed, --seed+1...: the table gives the mean and the "
                        "spread (max - min) (default: %(default)s)")
    p.add_argument("--skip-trainer", action="store_true", help="only (a) and its --try variants (a sweep)")
    p.add_argument("--trainer-seconds", type=float, nargs="+",
                   help="budgets at which the Trainer recipes run (default: --seconds); e.g. --seconds 30 60 150 "
                        "--trainer-seconds 600 gives the time-to-quality table's row for the cost of one Trainer run")
    p.add_argument("--recipes", nargs="+", choices=["b1", "b2"], default=["b1", "b2"],
                   help="which Trainer recipes to run (default: both)")
    p.add_argument("--target-loss", type=float,
                   help="time to quality against this loss instead of the Trainer's (b1) at --reference-seconds")
    p.add_argument("--reference-seconds", type=float, default=600,
                   help="the (b1) budget whose loss (a) must reach, for the time to quality (default: %(default)s)")
    p.add_argument("--max-probes", type=int, default=4,
                   help="most extra (a) runs the time-to-quality search makes (default: %(default)s)")
    p.add_argument("--no-time-to-quality", dest="time_to_quality", action="store_false",
                   help="skip the search for the budget at which (a) reaches the target")
    p.add_argument("--batch-size", type=int, default=32, help="the Trainer's sequences per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-4, help="the Trainer's peak learning rate (default: %(default)s)")
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
    if args.corpus_dir and args.text_file:
        p.error("give --corpus-dir (with --tokenizer) or --text-file, not both")
    if args.corpus_dir:
        corpus, tokenizer = args.corpus_dir, args.tokenizer
    elif args.text_file:
        corpus, tokenizer = prepare_text(args.workdir, args.text_file, args.vocab_size)
    else:
        corpus, tokenizer = prepare_data(args.workdir, args.rows)
    settings = {"a  (this project, --max-time)": list(args.extra)}
    settings.update({f"a+ {variant}": shlex.split(variant) for variant in args.try_flags})
    table: dict[str, dict[float, list[dict]]] = {name: {} for name in settings}
    trainer: dict[float, dict] = {}
    trainer_seconds = [] if args.skip_trainer else (args.trainer_seconds or args.seconds)
    for seconds in sorted(set(args.seconds) | set(trainer_seconds)):
        if seconds in args.seconds:
            for i, (name, flags) in enumerate(settings.items()):
                table[name][seconds] = [run_project(f"a{i}-r{r}", corpus, tokenizer, seconds, args.seed + r, args,
                                                    flags) for r in range(args.repeats)]
        if seconds in trainer_seconds:
            trainer[seconds] = compare_with_trainer(corpus, tokenizer, seconds, table, args)
    if args.seconds:
        print_table(table, args.seconds)
    target = args.target_loss
    if target is None and args.reference_seconds in trainer:
        target = trainer[args.reference_seconds]["b1 (Trainer, line by line)"]["val_loss"]
    if args.time_to_quality and target is not None:
        default_runs = {s: runs[0]["val_loss"] for s, runs in table["a  (this project, --max-time)"].items()}
        time_to_quality(corpus, tokenizer, target, default_runs, args)


def run_project(name: str, corpus: str, tokenizer: str, seconds: float, seed: int, args: argparse.Namespace,
                flags: list[str]) -> dict:
    """(a): run_training.py as a user with a time budget runs it: `--max-time SECONDS`, then only where the data
    is, the seed and the CPU; scored by the shared function."""
    job = os.path.join(args.workdir, f"{name}-{seconds:g}")
    subprocess.run(["rm", "-rf", job])
    subprocess.run([sys.executable, "training/run_training.py", "--job-dir", job, "--path-to-train-set",
                    f"{corpus}/train", "--path-to-val-set", f"{corpus}/validation", "--path-to-tokenizer", tokenizer,
                    "--max-time", f"{seconds:g}", "--seed", str(seed), "--accelerator", "cpu",
                    "--no-progress", *flags], cwd=REPO, check=True, capture_output=True)
    metrics = json.load(open(os.path.join(job, "final_metrics.json")))
    model = os.path.join(job, "model")
    size = json.load(open(os.path.join(job, "run_config.json")))["config"]["model_size"]
    result = {"steps": metrics["global_step"], "seconds": metrics["train_seconds"], "model_size": size,
              "tokens_per_second": metrics["train_tokens_per_second"], "model": model,
              "mfu": metrics.get("mfu"), "plateau_exit_step": metrics.get("plateau_exit_step"),
              "first_step_loss": metrics.get("first_step_loss"), "plateau_loss": metrics.get("unigram_plateau_loss"),
              "val_loss": validation_loss(model, tokenizer, corpus)}
    print(f"  {name} {seconds:g} s: {json.dumps({k: v for k, v in result.items() if k != 'model'})}", flush=True)
    return result


def compare_with_trainer(corpus: str, tokenizer: str, seconds: float, table: dict, args: argparse.Namespace) -> dict:
    """(b1) and (b2) for this budget, printed against (a)'s first run; returns their results."""
    results = {}
    for kind, name in (("b1", "b1 (Trainer, line by line)"), ("b2", "b2 (Trainer, 128-token groups)")):
        if kind not in args.recipes:
            continue
        out = subprocess.run([sys.executable, __file__, "--hf", kind, "--corpus-dir", corpus, "--tokenizer", tokenizer,
                              "--seconds", str(seconds), "--batch-size", str(args.batch_size), "--lr",
                              str(args.lr), "--seed", str(args.seed), "--workdir", args.workdir],
                             cwd=REPO, check=True, capture_output=True, text=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        results[name]["val_loss"] = validation_loss(os.path.join(args.workdir, kind, "model"), tokenizer, corpus)
    print(f"\n== budget {seconds:g} s ==\n{'run':<40}{'steps':>7}{'seconds':>9}{'tokens/s':>11}{'val loss':>10}")
    a = table["a  (this project, --max-time)"].get(seconds, [None])[0]
    for name, r in (({"a  (this project, --max-time)": a} if a else {}) | results).items():
        print(f"{name:<40}{r['steps']:>7}{r['seconds']:>9.1f}{r['tokens_per_second']:>11,.0f}{r['val_loss']:>10.3f}")
    if a is None:  # the Trainer alone at this budget: the reference of the time to quality
        return results
    with open(os.path.join(a["model"], "README.md")) as f:  # the model card lists what (a) ran with
        chosen = [line[2:].strip() for line in f if line.startswith(
            ("- precision:", "- lr:", "- batch_size:", "- mlm_probability:", "- mask_rule:", "- max_seq_length:",
             "- lr_schedule:", "- warmup_ratio:"))]
    print(f"(a) ran with {', '.join(chosen)}")
    for name, r in results.items():
        print(f"against {name}: tokens/s {a['tokens_per_second'] / r['tokens_per_second']:.2f}x, "
              f"val loss {a['val_loss']:.3f} vs {r['val_loss']:.3f}", flush=True)
    return results


def print_table(table: dict, budgets: list[float]) -> None:
    """One row a setting: steps and tokens/s at the first budget, then the loss at each budget, as the mean
    over repeats and the spread (max - min)."""
    head = "".join(f"{f'loss {s:g} s':>18}" for s in budgets)
    print(f"\n{'setting':<44}{'steps':>7}{'tokens/s':>10}{head}")
    for name, by_budget in table.items():
        first = by_budget[budgets[0]]
        steps = sum(r["steps"] for r in first) / len(first)
        speed = sum(r["tokens_per_second"] for r in first) / len(first)
        cells = ""
        for s in budgets:
            losses = [r["val_loss"] for r in by_budget[s]]
            mean = sum(losses) / len(losses)
            cells += f"{mean:>11.3f} ±{(max(losses) - min(losses)):>5.3f}" if len(losses) > 1 else f"{mean:>18.3f}"
        print(f"{name[:43]:<44}{steps:>7.0f}{speed:>10,.0f}{cells}", flush=True)


def time_to_quality(corpus: str, tokenizer: str, target: float, known: dict[float, float],
                    args: argparse.Namespace) -> None:
    """The smallest --max-time budget, found by bisection on budgets, at which (a) as a user runs it reaches
    `target`. A budget is a whole run (its schedule is laid out over it), so each probe is a fresh run."""
    def probe(seconds: float) -> float:
        known[seconds] = run_project("ttq", corpus, tokenizer, seconds, args.seed, args, list(args.extra))["val_loss"]
        print(f"  --max-time {seconds:g}: val loss {known[seconds]:.3f}", flush=True)
        return known[seconds]

    max_runs = args.max_probes
    print(f"\n== time to quality: the smallest --max-time at which (a) reaches {target:.3f} ==")
    for s in sorted(known):
        print(f"  --max-time {s:g}: val loss {known[s]:.3f}")
    runs = 0
    while not any(loss <= target for loss in known.values()) and runs < max_runs \
            and max(known, default=0) < args.reference_seconds:  # grow until reached, up to the Trainer's budget
        probe(min(2 * max(known), args.reference_seconds) if known else 60)
        runs += 1
    reached = [s for s, loss in known.items() if loss <= target]
    if not reached:
        print(f"not reached within {max(known):g} s: the {args.reference_seconds:g}-s reference loss needs more "
              f"than {args.reference_seconds:g} s here (ratio below 1x)", flush=True)
        return
    high = min(reached)
    low = max([s for s, loss in known.items() if s < high and loss > target], default=0.0)
    while runs < max_runs and (high - low) > max(5.0, 0.15 * high):
        middle = round((low + high) / 2 if low else high / 2)
        if probe(middle) <= target:
            high = middle
        else:
            low = middle
        runs += 1
    ratio = args.reference_seconds / high
    reference = (f"the Trainer's {args.reference_seconds:g} s" if args.target_loss is None else
                 f"the --reference-seconds {args.reference_seconds:g} in which --target-loss was reached")
    print(f"reached by --max-time {high:g} s" + (f", not by {low:g} s" if low else "") +
          f": {ratio:.1f}x sooner than {reference} (target 10x: "
          f"{'met' if ratio >= 10 else 'NOT met'})", flush=True)


if __name__ == "__main__":
    main()
