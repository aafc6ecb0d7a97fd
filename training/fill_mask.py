"""Fill-mask predictions from an exported model directory."""
from typing import Any

from transformers import pipeline


def load_fill_mask(model_dir: str):
    """A `transformers` fill-mask pipeline on the exported model (CPU unless a GPU is present)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar is noise in a command-line tool
    return pipeline("fill-mask", model=model_dir, device=0 if torch.cuda.is_available() else -1)


def fill_mask(fill, text: str, top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k (token, score, filled sentence) for one text; the text must contain the mask token once."""
    return [{"token": p["token_str"], "score": float(p["score"]), "sequence": p["sequence"]}
            for p in fill(text, top_k=top_k)]
