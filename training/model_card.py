"""The README.md model card written into every exported model directory."""
import json
import os
from typing import Any

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


def model_card(config: RobertaConfig, metrics: dict[str, Any], manifest: dict[str, Any] | None,
               tokenizer_report: dict[str, Any] | None, training: dict[str, Any]) -> str:
    """Markdown describing data, tokenizer, model, training and final validation metrics."""
    lines = ["# RoBERTa masked language model", "",
             "Trained from scratch with the masked-LM objective by `training/run_training.py` of lm-training-demo.", "",
             "## Use", "", "```python", "from transformers import pipeline", "",
             'fill = pipeline("fill-mask", model="PATH/TO/THIS/DIRECTORY")',
             'fill("Organic cotton baby <mask>", top_k=5)', "```", "", "## Data", ""]
    if manifest:
        source = manifest.get("source", {})
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
    lines += ["", "## Final validation (whole validation split, fixed masks)", ""]
    lines += [f"- {k}: {v}" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"
