"""The README.md model card written into every exported model directory, with the Hub's front matter."""
import json
import os
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import RobertaConfig


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def corpus_manifest(train_path: str) -> dict[str, Any] | None:
    """Step 1's manifest.json, found beside the training split directory."""
    return read_json(os.path.join(os.path.dirname(os.path.abspath(train_path.rstrip("/"))), "manifest.json"))


def model_name(model_dir: str) -> str:
    """What to call a model directory: the hub id of a hub cache snapshot, the name its own card gives, or the
    directory's name (its job's, for an exported JOB/model)."""
    parts = os.path.abspath(model_dir.rstrip("/")).split(os.sep)
    for part in parts:
        if part.startswith("models--"):  # ~/.cache/huggingface/hub/models--OWNER--NAME/snapshots/SHA
            return part[len("models--"):].replace("--", "/")
    card = os.path.join(model_dir, "README.md")
    if os.path.isfile(card):
        try:
            name = ModelCard.load(card).data.model_name
        except Exception:  # a card without front matter, or a broken one: fall back to the directory's name
            name = None
        if name:
            return name
    return parts[-2] if parts[-1] == "model" and len(parts) > 1 else parts[-1]


def model_card(config: RobertaConfig, metrics: dict[str, Any], manifest: dict[str, Any] | None,
               tokenizer_report: dict[str, Any] | None, training: dict[str, Any], name: str,
               validation: str, language: list[str] | None = None, init_from: str | None = None) -> str:
    """The card: front matter (library, task, language, datasets, base model, model-index with the final
    validation loss and perplexity), then data, tokenizer, model, training and final validation in Markdown.
    `validation` says what was scored, e.g. "10,000 of 28,300 validation sentences, fixed masks (seed 42)"."""
    source = (manifest or {}).get("source", {})
    base = model_name(init_from) if init_from else None
    scored = [("loss", "validation loss", metrics["val_loss"]), ("perplexity", "validation perplexity",
                                                                 metrics["val_perplexity"])]
    data = ModelCardData(
        library_name="transformers", pipeline_tag="fill-mask",
        language=(language[0] if len(language) == 1 else language) if language else None,
        datasets=[source["dataset"]] if source.get("dataset") else None, base_model=base, model_name=name,
        eval_results=[EvalResult(task_type="fill-mask", task_name="Masked language modelling",
                                 dataset_type=source.get("dataset") or "text", dataset_name=validation,
                                 dataset_split="validation", metric_type=kind, metric_name=label,
                                 metric_value=round(float(value), 4)) for kind, label, value in scored],
    )
    origin = (f"Continued from `{base}` (`--init-from`)" if base else "Trained from scratch")
    lines = [f"# {name}", "",
             f"RoBERTa masked language model. {origin} with the masked-LM objective by `training/run_training.py` "
             "of lm-training-demo.", "",
             "## Use", "", "```python", "from transformers import pipeline", "",
             'fill = pipeline("fill-mask", model="PATH/TO/THIS/DIRECTORY")',
             'fill("Organic cotton baby <mask>", top_k=5)', "```", "", "## Data", ""]
    if manifest:
        splits = manifest.get("splits", {})
        lines += [f"- source: {source.get('dataset') or ', '.join(os.path.basename(f) for f in source.get('data_files') or [])}",
                  f"- rows read: {manifest.get('rows_read')}, sentences kept: {manifest.get('rows_kept')}, "
                  f"duplicates removed: {manifest.get('duplicates_removed')}, dropped: {manifest.get('dropped')}",
                  f"- train lines: {splits.get('train', {}).get('lines')}, "
                  f"validation lines: {splits.get('validation', {}).get('lines')}"]
    else:
        lines.append("- no corpus manifest.json was found beside the training split")
    lines += ["", "## Tokenizer", "", "ByteLevel BPE, RoBERTa special tokens (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>`=4)."]
    if tokenizer_report:
        lines += [f"- vocabulary: {tokenizer_report.get('vocab_size')}, mean tokens per validation line: "
                  f"{tokenizer_report.get('mean_tokens_per_line')}, bytes per token: {tokenizer_report.get('bytes_per_token')}"]
    lines += ["", "## Model", "",
              f"- RobertaForMaskedLM: hidden {config.hidden_size}, layers {config.num_hidden_layers}, heads "
              f"{config.num_attention_heads}, feed-forward {config.intermediate_size}, vocabulary {config.vocab_size}, "
              f"positions {config.max_position_embeddings}",
              "", "## Training", ""]
    lines += [f"- {k}: {v}" for k, v in training.items()]
    lines += ["", f"## Final validation ({validation})", ""]
    lines += [f"- {k}: {v}" for k, v in metrics.items()]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
