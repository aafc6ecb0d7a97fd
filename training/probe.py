"""Downstream probe: fine-tune the exported encoder on a labelled table, against the same model from scratch."""
import random
from collections import Counter
from typing import Any

import numpy as np
import torch

from common import UsageError
from corpus.normalise import normalise_text
from corpus.sources import SourceStats, read_row_batches
from corpus.splitting import is_validation, sentence_hash


def load_labelled(data_files: list[str], text_column: str, label_column: str, test_size: float, seed: int,
                  min_examples: int) -> dict[str, Any]:
    """Unique normalised texts with their label, split by the corpus's stable hash.

    With step 1's --seed and --validation-sample-size, the held-out texts are exactly the ones the
    masked LM never trained on.
    """
    stats = SourceStats()
    seen: set[int] = set()
    train, test = [], []
    for rows in read_row_batches(data_files, None, None, [text_column, label_column], stats, text=False):
        for text, label in rows:
            text = normalise_text(text or "")
            label = (label or "").strip() if isinstance(label, str) else ("" if label is None else str(label))
            if not text or not label:
                continue
            h = sentence_hash(text, seed)
            if h in seen:
                continue
            seen.add(h)
            (test if is_validation(h, test_size) else train).append((text, label))
    counts = Counter(label for _, label in train)
    dropped = {label: n for label, n in counts.items() if n < min_examples}
    labels = sorted(label for label in counts if label not in dropped)
    if len(labels) < 2:
        raise UsageError(f"column {label_column!r} has {len(labels)} label(s) with at least {min_examples} examples; "
                         "a probe needs two or more (choose another --label-column or lower --min-examples)")
    keep = set(labels)
    if not any(lab in keep for _, lab in test):
        raise UsageError("no held-out example has a kept label; use more data or a larger --test-size")
    return {
        "labels": labels,
        "train": [(t, labels.index(lab)) for t, lab in train if lab in keep],
        "test": [(t, labels.index(lab)) for t, lab in test if lab in keep],
        "dropped_labels": dropped,
        "rows_read": stats.rows_read,
    }


def macro_f1(predicted: np.ndarray, truth: np.ndarray, n_labels: int) -> float:
    scores = []
    for c in range(n_labels):
        tp = np.sum((predicted == c) & (truth == c))
        fp, fn = np.sum((predicted == c) & (truth != c)), np.sum((predicted != c) & (truth == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def fine_tune(model, tokenizer, train: list[tuple[str, int]], test: list[tuple[str, int]], epochs: int,
              batch_size: int, lr: float, seed: int, max_length: int = 128) -> dict[str, float]:
    """Train `model` (a sequence classifier) on `train` with AdamW; return accuracy, macro-F1 and the mean
    cross-entropy on `test` (finer than accuracy while both models still predict the majority class)."""
    generator = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * -(-len(train) // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(1, steps)))

    def encode(rows):
        batch = tokenizer([t for t, _ in rows], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        return batch, torch.tensor([y for _, y in rows])

    model.train()
    for _ in range(epochs):
        order = train[:]
        generator.shuffle(order)
        for i in range(0, len(order), batch_size):
            batch, y = encode(order[i : i + batch_size])
            loss = model(**batch, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()
    predicted, loss_sum = [], 0.0
    with torch.no_grad():
        for i in range(0, len(test), 128):
            batch, y = encode(test[i : i + 128])
            logits = model(**batch).logits
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            predicted.append(logits.argmax(-1))
    pred, truth = torch.cat(predicted).numpy(), np.array([y for _, y in test])
    n_labels = model.config.num_labels
    return {"accuracy": round(float(np.mean(pred == truth)), 4), "macro_f1": round(macro_f1(pred, truth, n_labels), 4),
            "loss": round(loss_sum / max(len(test), 1), 4)}


def run_probe(model_dir: str, data: dict[str, Any], epochs: int = 3, batch_size: int = 32, lr: float = 2e-4,
              seed: int = 42) -> dict[str, Any]:
    """Fine-tune the pretrained encoder and the same architecture from random weights, with the same budget."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "some weights were newly initialised" is the point of a probe, not news
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n = len(data["labels"])
    results = {}
    for name in ("pretrained", "random_init"):
        torch.manual_seed(seed)  # same head initialisation and data order for both
        if name == "pretrained":
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=n)
        else:
            model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model_dir, num_labels=n))
        results[name] = fine_tune(model, tokenizer, data["train"], data["test"], epochs, batch_size, lr, seed)
    majority = Counter(y for _, y in data["train"]).most_common(1)[0][0]
    results.update({
        "labels": n,
        "label_names": data["labels"],
        "train_examples": len(data["train"]),
        "test_examples": len(data["test"]),
        "majority_class_accuracy": round(float(np.mean([y == majority for _, y in data["test"]])), 4),
        "dropped_labels": data["dropped_labels"],
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
    })
    return results
