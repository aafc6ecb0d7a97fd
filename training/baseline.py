"""The baseline practitioners try first: TF-IDF of word 1-2 grams and character 2-5 grams, logistic regression."""
from typing import Any

import numpy as np

from common import UsageError
from training.label_budget import Rows, better, scores

C_GRID = (1.0, 10.0, 100.0)  # inverse regularisation, chosen on the dev split as the encoders' learning rate


def require_sklearn() -> None:
    """Stop in one line when scikit-learn, an optional extra, is not installed."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UsageError("the probe's TF-IDF baseline needs scikit-learn: pip install -e '.[probe]'") from None


def fit_tfidf(texts: list[str], labels: list[int], C: float) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
    return make_pipeline(features, LogisticRegression(C=C, max_iter=1000)).fit(texts, labels)


def predict_tfidf(model: Any, texts: list[str], n_labels: int) -> np.ndarray:
    """Class probabilities [texts, n_labels]; a class absent from the fit examples gets 0."""
    probabilities = np.zeros((len(texts), n_labels))
    probabilities[:, model.classes_] = model.predict_proba(texts)
    return probabilities


def train_tfidf(fit: Rows, dev: Rows, n_labels: int) -> tuple[Any, dict[str, Any]]:
    """Fit on `fit` with each C of C_GRID; keep the one with the best dev score."""
    best, choice = None, None
    for C in C_GRID:
        model = fit_tfidf([t for t, _ in fit], [y for _, y in fit], C)
        dev_scores = scores(predict_tfidf(model, [t for t, _ in dev], n_labels), [y for _, y in dev])
        if better(dev_scores, choice and choice["dev"]):
            best, choice = model, {"C": C, "dev": dev_scores}
    return best, choice
