"""Downstream probe: a label-budget curve of the exported encoder fine-tuned on a labelled table, against the same
architecture from random initialisation and against TF-IDF + logistic regression."""
import random
import sys
import time
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np
import torch

from common import PipelineError, UsageError
from corpus.normalise import normalise_text
from corpus.sources import SourceStats, read_row_batches
from corpus.splitting import is_validation, sentence_hash
from training.baseline import C_GRID, predict_tfidf, train_tfidf
from training.label_budget import Rows, better, sample_per_class, scores, split_dev, summarise


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


class MeanPoolClassifier(torch.nn.Module):
    """An encoder, the mean of its token states, a linear head. The mean rather than the <s> state: a masked LM
    trained without a next-sentence task never taught <s> to stand for the sentence."""

    def __init__(self, encoder: torch.nn.Module, n_labels: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(encoder.config.hidden_size, n_labels)
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return self.head((states * mask).sum(1) / mask.sum(1).clamp(min=1))


def load_encoder(model_dir: str, pretrained: bool) -> torch.nn.Module:
    """The exported model's encoder (RobertaModel, no pooler), with its weights or freshly initialised."""
    from transformers import AutoConfig, AutoModel

    if not pretrained:
        return AutoModel.from_config(AutoConfig.from_pretrained(model_dir), add_pooling_layer=False)
    encoder, info = AutoModel.from_pretrained(model_dir, add_pooling_layer=False, output_loading_info=True)
    if info["missing_keys"]:  # a silently random "pretrained" encoder would make the whole comparison void
        raise PipelineError(f"{model_dir}: no weights for {len(info['missing_keys'])} encoder tensor(s), e.g. "
                            f"{sorted(info['missing_keys'])[0]}")
    return encoder


def encode(tokenizer, texts: list[str], max_length: int = 128) -> dict[str, torch.Tensor]:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def predict(model: torch.nn.Module, tokenizer, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Class probabilities [texts, labels]."""
    model.eval()
    with torch.no_grad():
        out = [torch.softmax(model(**encode(tokenizer, texts[i : i + batch_size])), -1)
               for i in range(0, len(texts), batch_size)]
    return torch.cat(out).numpy()


def train_encoder(make_model: Callable[[], torch.nn.Module], tokenizer, fit: Rows, dev: Rows, lrs: Sequence[float],
                  epochs: int, min_steps: int, batch_size: int, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fine-tune a fresh model with each learning rate, scoring `dev` after every epoch; return the model with
    the weights of the best (learning rate, epoch) and that choice. At least `min_steps` optimizer steps per
    learning rate: a few labels per class make epochs of one or two steps."""
    steps_per_epoch = -(-len(fit) // batch_size)
    n_epochs = max(epochs, -(-min_steps // steps_per_epoch))
    total = n_epochs * steps_per_epoch
    warmup = max(1, total // 10)
    best_state, choice = None, None
    for lr in lrs:
        model = make_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warmup, (total - s) / max(1, total - warmup)))
        generator = random.Random(seed)  # the same data order for every learning rate and encoder
        for epoch in range(1, n_epochs + 1):
            model.train()
            order = fit[:]
            generator.shuffle(order)
            for i in range(0, len(order), batch_size):
                rows = order[i : i + batch_size]
                logits = model(**encode(tokenizer, [t for t, _ in rows]))
                torch.nn.functional.cross_entropy(logits, torch.tensor([y for _, y in rows])).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            dev_scores = scores(predict(model, tokenizer, [t for t, _ in dev]), [y for _, y in dev])
            if better(dev_scores, choice and choice["dev"]):
                choice = {"lr": lr, "epochs": epoch, "dev": dev_scores}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model, choice


METHODS = {"pretrained": "this model", "random_init": "random initialisation",
           "tfidf_logreg": "TF-IDF + logistic regression"}


def run_probe(model_dir: str, data: dict[str, Any], budgets: list[int | None], seeds: int = 3,
              lrs: Sequence[float] = (2e-4, 1e-3), epochs: int = 3, min_steps: int = 60, batch_size: int = 32,
              dev_share: float = 0.2, seed: int = 42) -> dict[str, Any]:
    """The label-budget curve: for each k (labelled examples per class, None = all) and each of `seeds` draws of
    them (one for all), the three methods fit on the same examples, choose their settings on the same dev split
    carved from them, and are scored once on the same held-out test split."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n = len(data["labels"])
    test_texts, test_truth = [t for t, _ in data["test"]], [y for _, y in data["test"]]

    def make_model(pretrained: bool, run_seed: int) -> torch.nn.Module:
        torch.manual_seed(run_seed)
        encoder = load_encoder(model_dir, pretrained)
        torch.manual_seed(run_seed)  # the same head for both encoders
        return MeanPoolClassifier(encoder, n)

    curve = {}
    for k in budgets:
        runs = {method: [] for method in METHODS}
        for run_seed in range(seed, seed + (seeds if k is not None else 1)):
            fit, dev = split_dev(sample_per_class(data["train"], k, run_seed), dev_share, run_seed)
            for method in METHODS:
                start = time.time()
                if method == "tfidf_logreg":
                    model, choice = train_tfidf(fit, dev, n)
                    probabilities = predict_tfidf(model, test_texts, n)
                else:
                    model, choice = train_encoder(lambda: make_model(method == "pretrained", run_seed), tokenizer,
                                                  fit, dev, lrs, epochs, min_steps, batch_size, run_seed)
                    probabilities = predict(model, tokenizer, test_texts)
                run = {"seed": run_seed, "fit_examples": len(fit), "dev_examples": len(dev), **choice,
                       **scores(probabilities, test_truth)}
                runs[method].append(run)
                print(f"k={k or 'all'} seed {run_seed} {method}: test accuracy {run['accuracy']}, macro-F1 "
                      f"{run['macro_f1']} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
        curve["all" if k is None else str(k)] = {method: summarise(r) for method, r in runs.items()}
    majority = Counter(y for _, y in data["train"]).most_common(1)[0][0]
    results = {"curve": curve}
    if "all" in curve:  # the all-labels runs, where earlier probes put them
        results.update({method: {key: curve["all"][method]["runs"][0][key] for key in ("accuracy", "macro_f1", "loss")}
                        for method in METHODS})
    results.update({
        "labels": n,
        "label_names": data["labels"],
        "train_examples": len(data["train"]),
        "test_examples": len(data["test"]),
        "majority_class_accuracy": round(float(np.mean([y == majority for _, y in data["test"]])), 4),
        "dropped_labels": data["dropped_labels"],
        "recipe": {"pooling": "mean over tokens", "lrs": list(lrs), "max_epochs": epochs, "min_steps": min_steps,
                   "batch_size": batch_size, "dev_share": dev_share, "seeds": seeds, "seed": seed,
                   "tfidf_C": list(C_GRID)},
    })
    return results
