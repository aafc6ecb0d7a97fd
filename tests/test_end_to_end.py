import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import pipeline

from conftest import run_in_process, run_script, scalars


def test_validation_loss_falls_and_metrics_are_written(pipeline_run):
    metrics = pipeline_run["final_metrics"]
    assert metrics["global_step"] == 40
    assert metrics["val_perplexity"] == pytest.approx(2.718281828 ** metrics["val_loss"], rel=1e-6)
    assert metrics["train_tokens"] > 0 and metrics["train_seconds"] > 0 and 0 < metrics["val_mlm_accuracy"] < 1
    val = scalars(pipeline_run["job"], "val/loss")
    assert len(val) >= 4 and val[-1][1] < val[0][1] - 0.3, val
    assert val[-1][1] == pytest.approx(metrics["val_loss"], rel=1e-5)


def test_tensorboard_has_train_and_validation_curves(pipeline_run):
    events = EventAccumulator(os.path.join(pipeline_run["job"], "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/mlm_accuracy", "lr", "val/loss", "val/perplexity", "val/mlm_accuracy"} <= tags


def test_exported_model_loads_in_fill_mask_pipeline(pipeline_run):
    model_dir = os.path.join(pipeline_run["job"], "model")
    assert os.path.isfile(os.path.join(model_dir, "model.safetensors"))
    fill = pipeline("fill-mask", model=model_dir)
    predictions = fill("Nestling Organic Cotton Swaddle <mask>", top_k=3)
    assert len(predictions) == 3 and all("<mask>" not in p["sequence"] for p in predictions)
    assert predictions[0]["score"] >= predictions[-1]["score"] > 0
    result = run_script("training/run_fill_mask.py", "--model-dir", model_dir, "Soft <mask> Blanket", "--top-k", "2")
    assert result.stdout.count("Soft") >= 3  # the input and two filled sentences


def test_the_export_holds_the_trained_weights(pipeline_run):
    import torch
    from safetensors.torch import load_file

    job = pipeline_run["job"]
    checkpoint = torch.load(os.path.join(job, "checkpoints", "last.ckpt"), weights_only=False)
    assert checkpoint["global_step"] == pipeline_run["final_metrics"]["global_step"] == 40
    exported = load_file(os.path.join(job, "model", "model.safetensors"))
    trained = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    assert len(exported) > 10 and set(exported) <= set(trained)
    for name, tensor in exported.items():
        assert torch.equal(tensor.float(), trained[name].float()), name
    # and they are trained: far from a fresh initialisation of the same config
    from transformers import RobertaForMaskedLM

    fresh = RobertaForMaskedLM.from_pretrained(os.path.join(job, "model")).__class__(
        RobertaForMaskedLM.from_pretrained(os.path.join(job, "model")).config).state_dict()
    name = "roberta.encoder.layer.0.attention.self.query.weight"
    assert (exported[name].float() - fresh[name]).abs().max() > 1e-2


def test_checkpoint_and_run_config(pipeline_run):
    job = pipeline_run["job"]
    assert os.path.isfile(os.path.join(job, "checkpoints", "last.ckpt"))
    assert json.load(open(os.path.join(job, "run_config.json")))["identity"]["max_seq_length"] == 64


def test_learning_curves_plot(tmp_path, pipeline_run):
    out = tmp_path / "curves.png"
    run_script("training/plot_learning_curves.py", "--job-dir", pipeline_run["job"], "--output", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_model_card_and_hparams(pipeline_run):
    from huggingface_hub import ModelCard

    path = os.path.join(pipeline_run["job"], "model", "README.md")
    card, metrics = ModelCard.load(path), pipeline_run["final_metrics"]
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "fill-mask")
    assert card.data.model_name == os.path.basename(pipeline_run["job"]) and card.data.base_model is None
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert scores == {"loss": round(metrics["val_loss"], 4), "perplexity": round(metrics["val_perplexity"], 4)}
    assert {r.task_type for r in card.data.eval_results} == {"fill-mask"} and card.data.language is None
    text = open(path).read()
    assert "Trained from scratch" in text and "validation sentences, fixed masks (seed 42)" in text
    assert "## Final validation" in text and str(metrics["val_loss"]) in text
    assert "train lines:" in text and "vocabulary:" in text
    events = EventAccumulator(os.path.join(pipeline_run["job"], "tensorboard"))
    events.Reload()
    assert "hparams/val_loss" in events.Tags()["scalars"]  # next to the hyperparameters in the HParams tab


def test_fill_mask_from_checkpoint_and_stdin(pipeline_run):
    ckpt = os.path.join(pipeline_run["job"], "checkpoints", "last.ckpt")
    result = run_in_process("training/run_fill_mask.py", "--checkpoint", ckpt, "-", "--top-k", "2",
                            input="Soft <mask> Blanket\nBaby <mask> Bottle\n")
    assert "Soft <mask> Blanket" in result.stdout and "Baby <mask> Bottle" in result.stdout
    bad = run_in_process("training/run_fill_mask.py", "--checkpoint", ckpt, "no mask here", check=False)
    assert bad.returncode == 2 and "exactly once" in bad.stderr
