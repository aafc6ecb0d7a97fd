"""Export a trained module as a plain Hugging Face model directory (safetensors + tokenizer)."""
import json
import os
import shutil
import tempfile
from typing import Any

from transformers import PreTrainedTokenizerBase, RobertaForMaskedLM

from common import publish


def export_model(model: RobertaForMaskedLM, tokenizer: PreTrainedTokenizerBase, output_dir: str,
                 extra_files: dict[str, Any] | None = None) -> None:
    """Write model + tokenizer aside, then swap them in, so `output_dir` is never half-written."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        model.save_pretrained(staging)  # safetensors by default
        tokenizer.save_pretrained(staging)
        for name, content in (extra_files or {}).items():
            with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                f.write(content if isinstance(content, str) else json.dumps(content, indent=2) + "\n")
        publish(staging, output_dir, fsync_files=True)  # save_pretrained writes without fsync
    finally:
        shutil.rmtree(staging, ignore_errors=True)
