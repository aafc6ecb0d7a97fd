"""The probe's label-budget curve: sampling, the TF-IDF baseline, dev-split selection, the card, the extra."""
import sys
from collections import Counter

import pytest

from conftest import run_in_process
from training.label_budget import sample_per_class, split_dev, summarise

WORDS = {0: "apple pear plum", 1: "engine wheel brake", 2: "cotton wool silk", 3: "oak pine birch"}


def rows(counts: dict[int, int], tag: str = "train") -> list[tuple[str, int]]:
    """Separable texts: each class has its own words; `tag` keeps the splits' texts apart."""
    return [(f"{WORDS[c]} {tag} {i}", c) for c, n in counts.items() for i in range(n)]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    from transformers import RobertaConfig, RobertaForMaskedLM

    path = tmp_path_factory.mktemp("tiny_model")
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    RobertaForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_label_budget_sampling_is_k_per_class_stratified_and_seeded():
    train = rows({0: 60, 1: 40, 2: 2, 3: 1})
    picked = sample_per_class(train, 8, seed=1)
    assert Counter(y for _, y in picked) == {0: 8, 1: 8, 2: 2, 3: 1}  # a class with fewer gives all it has
    assert set(picked) <= set(train) and len(set(picked)) == len(picked)
    assert sample_per_class(train, 8, seed=1) == picked
    assert set(sample_per_class(train, 8, seed=2)) != set(picked)
    assert sorted(sample_per_class(train, None, seed=1)) == sorted(train)

    fit, dev = split_dev(picked, 0.25, seed=1)
    assert sorted(fit + dev) == sorted(picked) and not set(fit) & set(dev)
    # a quarter of each class, at least one, none of a class of one (it could not be fitted)
    assert Counter(y for _, y in dev) == {0: 2, 1: 2, 2: 1} and Counter(y for _, y in fit) == {0: 6, 1: 6, 2: 1, 3: 1}
    assert split_dev(picked, 0.25, seed=1) == (fit, dev)


def test_tfidf_baseline_separates_a_separable_set():
    from training.baseline import C_GRID, predict_tfidf, train_tfidf
    from training.label_budget import scores

    fit, dev = split_dev(rows({0: 10, 1: 10, 2: 10}), 0.2, seed=0)
    test = rows({0: 20, 1: 20, 2: 20}, tag="test")
    model, choice = train_tfidf(fit, dev, 3)
    assert choice["C"] in C_GRID and choice["dev"]["accuracy"] == 1.0
    result = scores(predict_tfidf(model, [t for t, _ in test], 3), [y for _, y in test])
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0


def test_dev_selection_never_touches_the_test_split(monkeypatch, tiny_model_dir):
    """Every text any method fits or chooses by comes from the training examples; each method sees the test
    texts exactly once per run, all of them, for its final score."""
    import training.baseline as baseline
    import training.probe as probe

    train, test = rows({0: 30, 1: 30, 2: 30}), rows({0: 10, 1: 10, 2: 10}, tag="test")
    data = {"labels": ["a", "b", "c"], "train": train, "test": test, "dropped_labels": {}}
    seen = []

    def spy(function, position):
        def wrapper(*args, **kwargs):
            seen.append(list(args[position]))
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(probe, "encode", spy(probe.encode, 1))
    monkeypatch.setattr(baseline, "fit_tfidf", spy(baseline.fit_tfidf, 0))
    monkeypatch.setattr(baseline, "predict_tfidf", spy(baseline.predict_tfidf, 1))
    monkeypatch.setattr(probe, "predict_tfidf", spy(probe.predict_tfidf, 1))
    metrics = probe.run_probe(tiny_model_dir, data, [4], seeds=2, lrs=[1e-3, 1e-4], epochs=2, min_steps=0,
                              batch_size=4, dev_share=0.25)

    test_texts, train_texts = [t for t, _ in test], {t for t, _ in train}
    touching = [texts for texts in seen if set(texts) & set(test_texts)]
    assert touching == [test_texts] * 2 * 3  # 2 seeds x 3 methods, once each
    assert all(set(texts) <= train_texts for texts in seen if texts != test_texts)
    for method, summary in metrics["curve"]["4"].items():
        assert summary["seeds"] == 2 and [r["fit_examples"] + r["dev_examples"] for r in summary["runs"]] == [12, 12]
        assert all(r["dev_examples"] == 3 for r in summary["runs"])


def test_the_curve_is_a_table_in_the_model_card(tmp_path):
    from training.run_probe import CARD_HEADING, cite_in_model_card

    def runs(*accuracies):
        return summarise([{"accuracy": a, "macro_f1": a - 0.05, "fit_examples": 18, "dev_examples": 6}
                          for a in accuracies])

    metrics = {"labels": 3, "train_examples": 900, "test_examples": 100, "majority_class_accuracy": 0.34,
               "recipe": {"lrs": [2e-4, 1e-3], "max_epochs": 3, "dev_share": 0.2},
               "curve": {"8": {"pretrained": runs(0.6, 0.8), "random_init": runs(0.5, 0.5),
                               "tfidf_logreg": runs(0.7, 0.9)},
                         "all": {"pretrained": runs(0.95), "random_init": runs(0.93), "tfidf_logreg": runs(0.96)}}}
    (tmp_path / "README.md").write_text(f"# card\n\n{CARD_HEADING}\n\nan older probe\n")
    cite_in_model_card(str(tmp_path), metrics)
    cite_in_model_card(str(tmp_path), metrics)
    card = (tmp_path / "README.md").read_text()
    assert card.count(CARD_HEADING) == 1 and "an older probe" not in card
    assert "| this model | random initialisation | TF-IDF + logistic regression |" in card
    assert "| 8 (2 seeds) | 24 | 0.700 ± 0.141 / 0.650 ± 0.141 | 0.500 ± 0.000 / 0.450 ± 0.000 | 0.800 ± 0.141" in card
    assert "| all | 24 | 0.950 / 0.900 | 0.930 / 0.880 | 0.960 / 0.910 |" in card


def test_a_missing_scikit_learn_is_a_one_line_error(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    result = run_in_process("training/run_probe.py", "--model-dir", str(tmp_path), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "pip install -e '.[probe]'" in result.stderr
