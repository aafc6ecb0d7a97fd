import json
import os

import pytest

from conftest import TINY_MODEL, run_script


def first_and_last_val_loss(job):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(job, "tensorboard"))
    events.Reload()
    values = [e.value for e in events.Scalars("val/loss")]
    return values[0], values[-1]


def short_run(pipeline_run, job, *extra):
    corpus = pipeline_run["corpus"]
    return run_script("training/run_training.py", "--job-dir", str(job), "--path-to-train-set", f"{corpus}/train",
                      "--path-to-val-set", f"{corpus}/validation", "--max-steps", "2", "--validate-every-n-steps", "1",
                      "--lr", "1e-6", "--accelerator", "cpu", "--no-progress", *extra)


def test_init_from_continues_from_the_exported_weights(tmp_path, pipeline_run):
    exported_loss = pipeline_run["final_metrics"]["val_loss"]
    short_run(pipeline_run, tmp_path / "continued", "--init-from", os.path.join(pipeline_run["job"], "model"),
              "--max-seq-length", "64", "--language", "en", "--max-time", "600")  # --max-steps 2 ends it first
    run = json.load(open(tmp_path / "continued" / "run_config.json"))
    # the budget chooses no size for a model that has one (nor, with it, base's rate for tiny's)
    assert run["config"]["model_size"] is None and run["model_size_reason"] is None
    assert run["identity"]["model_size"] == "init_from"
    # RoBERTa's zero output bias: a fresh model far from the exported one (the unigram bias starts close to it)
    short_run(pipeline_run, tmp_path / "fresh", "--path-to-tokenizer", pipeline_run["tokenizer"], *TINY_MODEL,
              "--output-bias", "zero")
    continued, _ = first_and_last_val_loss(tmp_path / "continued")
    fresh, _ = first_and_last_val_loss(tmp_path / "fresh")
    assert abs(continued - exported_loss) < 0.05, (continued, exported_loss)
    assert continued < fresh - 0.5, (continued, fresh)
    # the model keeps its own output bias: no unigram one written over it (2 steps at 1e-6 move it by 2e-6)
    from safetensors.torch import load_file

    bias = [load_file(os.path.join(job, "model", "model.safetensors"))["lm_head.bias"]
            for job in (pipeline_run["job"], tmp_path / "continued")]
    assert (bias[0] - bias[1]).abs().max() < 1e-4
    card = open(tmp_path / "continued" / "model" / "README.md").read()
    assert "hidden 64, layers 2" in card  # the architecture came from the model, not from the flags
    from huggingface_hub import ModelCard

    data = ModelCard.load(tmp_path / "continued" / "model" / "README.md").data
    origin = os.path.basename(pipeline_run["job"])  # the name the exported model's own card gives
    assert data.base_model == origin and f"Continued from `{origin}`" in card and data.language == "en"


def test_init_from_with_another_tokenizer_is_refused(tmp_path, pipeline_run):
    tok = tmp_path / "tok"
    run_script("tokenizer/run_tokenizer_fitting.py", "--corpus-dir", f"{pipeline_run['corpus']}/train",
               "--output-dir", str(tok), "--vocab-size", "300", "--no-progress")
    corpus = pipeline_run["corpus"]
    result = run_script("training/run_training.py", "--job-dir", str(tmp_path / "job"), "--init-from",
                        os.path.join(pipeline_run["job"], "model"), "--path-to-tokenizer", str(tok),
                        "--path-to-train-set", f"{corpus}/train", "--path-to-val-set", f"{corpus}/validation",
                        check=False)
    assert result.returncode == 2 and "drop --path-to-tokenizer" in result.stderr
    assert not (tmp_path / "job").exists()


def test_probe_compares_pretrained_with_random_init(tmp_path, pipeline_run, sample_tsv):
    model_dir = tmp_path / "model"
    run_script("training/export_model.py", "--checkpoint", os.path.join(pipeline_run["job"], "checkpoints", "last.ckpt"),
               "--output-dir", str(model_dir))
    (model_dir / "README.md").write_text("# card\n")
    result = run_script("training/run_probe.py", "--model-dir", str(model_dir), "--data-files", sample_tsv,
                        "--epochs", "1", "--min-examples", "5", "--budgets", "4", "all", "--seeds", "2",
                        "--min-steps", "0", "--lr", "1e-3")
    metrics = json.load(open(model_dir / "probe_metrics.json"))
    assert metrics["labels"] == 5 and metrics["test_examples"] > 10 and list(metrics["curve"]) == ["4", "all"]
    for name in ("pretrained", "random_init", "tfidf_logreg"):
        assert 0 <= metrics[name]["accuracy"] <= 1 and 0 <= metrics[name]["macro_f1"] <= 1
        assert metrics["curve"]["4"][name]["seeds"] == 2
    # two different encoders were probed (the same weights twice would give the same numbers)
    assert metrics["pretrained"]["loss"] != metrics["random_init"]["loss"] > 0
    card = (model_dir / "README.md").read_text()
    row = f"| all | {metrics['train_examples']} | {metrics['pretrained']['accuracy']:.3f} / "
    assert "## Downstream probe" in card and row in card and row in result.stdout


@pytest.mark.parametrize("content, args, words", [
    ("title,category\na,x\nb,x\nc,x\n", ["--label-column", "nope", "--text-column", "title"], "its columns are"),
    ("title,category\n" + "".join(f"t{i},same\n" for i in range(50)), ["--text-column", "title", "--label-column",
                                                                      "category"], "1 label(s)"),
])
def test_probe_bad_labels(tmp_path, pipeline_run, content, args, words):
    table = tmp_path / "t.csv"
    table.write_text(content)
    result = run_script("training/run_probe.py", "--model-dir", os.path.join(pipeline_run["job"], "model"),
                        "--data-files", str(table), *args, check=False)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr


def test_a_long_tail_of_dropped_labels_is_one_short_line():
    from training.run_probe import dropped_summary

    dropped = {f"Category number {i} with a long name": 1 + i % 4 for i in range(200)}
    line = dropped_summary(dropped, 20)
    assert "\n" not in line and len(line) < 120
    assert "200 label(s)" in line and f"({sum(dropped.values())} rows)" in line and "probe_metrics.json" in line
