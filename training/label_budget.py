"""The label budget of the probe: k labelled examples per class drawn from the training examples, a dev split
carved from them, and the scores every method is judged by."""
import random
from collections import defaultdict

import numpy as np

Rows = list[tuple[str, int]]


def by_class(rows: Rows) -> dict[int, Rows]:
    groups = defaultdict(list)
    for row in rows:
        groups[row[1]].append(row)
    return dict(sorted(groups.items()))


def sample_per_class(train: Rows, k: int | None, seed: int) -> Rows:
    """k examples of each class (all of a class that has fewer; all of them when k is None), drawn by `seed`."""
    generator = random.Random(seed)
    picked = []
    for rows in by_class(train).values():
        picked += rows if k is None or len(rows) <= k else generator.sample(rows, k)
    return picked


def split_dev(rows: Rows, dev_share: float, seed: int) -> tuple[Rows, Rows]:
    """(fit, dev): `dev_share` of each class, at least one example, for choosing the learning rate and epochs;
    a class of one example stays whole in fit."""
    generator = random.Random(seed)
    fit, dev = [], []
    for group in by_class(rows).values():
        group = group[:]
        generator.shuffle(group)
        n_dev = 0 if len(group) < 2 else max(1, round(dev_share * len(group)))
        dev += group[:n_dev]
        fit += group[n_dev:]
    return fit, dev


def macro_f1(predicted: np.ndarray, truth: np.ndarray, n_labels: int) -> float:
    scores = []
    for c in range(n_labels):
        tp = np.sum((predicted == c) & (truth == c))
        fp, fn = np.sum((predicted == c) & (truth != c)), np.sum((predicted != c) & (truth == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def scores(probabilities: np.ndarray, truth: list[int]) -> dict[str, float]:
    """Accuracy, macro-F1 and the mean cross-entropy (finer than accuracy while a model still predicts the
    majority class) of class probabilities [examples, labels]."""
    truth = np.asarray(truth)
    predicted = probabilities.argmax(-1)
    likelihood = np.clip(probabilities[np.arange(len(truth)), truth], 1e-12, None)
    return {"accuracy": round(float(np.mean(predicted == truth)), 4),
            "macro_f1": round(macro_f1(predicted, truth, probabilities.shape[1]), 4),
            "loss": round(float(-np.mean(np.log(likelihood))), 4)}


def better(a: dict[str, float], b: dict[str, float] | None) -> bool:
    """Dev score a beats b: higher accuracy, then lower loss (a small dev split ties on accuracy often)."""
    return b is None or (a["accuracy"], -a["loss"]) > (b["accuracy"], -b["loss"])


def summarise(runs: list[dict]) -> dict:
    """Mean and spread (sample standard deviation, 0 for one run) of accuracy and macro-F1 over seeds."""
    out = {"seeds": len(runs)}
    for key in ("accuracy", "macro_f1"):
        values = [r[key] for r in runs]
        out[key] = round(float(np.mean(values)), 4)
        out[f"{key}_std"] = round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else 0.0
    out["runs"] = runs
    return out
