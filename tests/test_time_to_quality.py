"""What a time budget gets: the model size chosen by --max-time, the unigram plateau seen, MFU on CPUs."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, run_in_process
from training import config, devices
from training.config import TrainingConfig, choose_model_size
from training.plateau import (PLATEAU_MARGIN, PlateauWatch, TrainingTokenFrequencies, UnigramOutputBias,
                              context_free_loss, plateau_exit_step, token_frequencies, unigram_log_prior)

AVX2 = "processor\t: 0\ncpu MHz\t\t: 1800.000\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
AVX512_BF16 = "flags\t\t: fpu avx avx2 fma avx512f avx512_bf16\n"


def cfg(**given) -> TrainingConfig:
    return TrainingConfig(job_dir="j", train_path="t", val_path="v", **given)


def test_the_budget_chooses_the_size_from_the_table_and_an_explicit_size_wins(monkeypatch):
    monkeypatch.setitem(config.SIZE_BY_BUDGET, "cpu", ((90, "tiny", "fast"), (1200, "small", "x"), (math.inf, "base", "y")))
    chosen = {t: choose_model_size(cfg(max_time=t), "cpu")[0].model_size for t in ("60", "90", "91", "00:00:20:00", "7200")}
    assert chosen == {"60": "tiny", "90": "tiny", "91": "small", "00:00:20:00": "small", "7200": "base"}
    sized, why = choose_model_size(cfg(max_time="60"), "cpu")
    assert why == "--max-time 60 s on a cpu device: tiny, fast"
    assert choose_model_size(cfg(max_time="60", model_size="base"), "cpu") == (cfg(max_time="60", model_size="base"),
                                                                             "--model-size base")
    unbudgeted, why = choose_model_size(cfg(), "cpu")
    assert unbudgeted.model_size == "base" and "no --max-time" in why  # the demo's default without a budget
    on_gpu, why = choose_model_size(cfg(max_time="60"), "gpu")
    assert on_gpu.model_size == config.SIZE_BY_BUDGET["gpu"][0][1] and "not measured" in why
    # every kind of device has a row for every budget, each a preset with its reason
    assert all(rows[-1][0] == math.inf for rows in config.SIZE_BY_BUDGET.values())
    assert all(size in config.MODEL_SIZES and why for rows in config.SIZE_BY_BUDGET.values() for _, size, why in rows)


def test_the_device_kind_reads_the_plan():
    plan = devices.plan_for_device("cpu", "32-true")
    assert devices.device_kind(plan) == "cpu"
    assert devices.device_kind(devices.plan_for_device("cpu", "bf16-mixed")) == "cpu-bf16"
    assert devices.device_kind(devices.plan_for_device("cuda", capability=(9, 0))) == "gpu"


def test_the_chosen_size_is_recorded_and_a_resumed_run_keeps_it(monkeypatch, tmp_path, pipeline_run):
    # tiny up to 1 s, small beyond: the resumed run's longer budget would choose small, it must go on with tiny
    monkeypatch.setitem(config.SIZE_BY_BUDGET, "cpu", ((1.5, "tiny", "a"), (math.inf, "small", "b")))
    job, corpus = tmp_path / "job", pipeline_run["corpus"]
    shape = [a for a in TINY_MODEL if a not in ("--model-size", "tiny")]
    args = ["--job-dir", str(job), "--path-to-train-set", f"{corpus}/train", "--path-to-val-set", f"{corpus}/validation",
            "--path-to-tokenizer", pipeline_run["tokenizer"], *shape, "--accelerator", "cpu", "--precision", "32-true",
            "--no-progress", "--fill-mask-samples", "0", "--max-val-sentences", "32"]
    run_in_process("training/run_training.py", *args, "--max-time", "1")
    run = json.load(open(job / "run_config.json"))
    assert run["config"]["model_size"] == "tiny" and run["identity"]["model_size"] == "tiny"
    assert "--max-time 1 s" in run["model_size_reason"]
    first = json.load(open(job / "final_metrics.json"))["global_step"]
    run_in_process("training/run_training.py", *args, "--max-time", "2")  # resumes: a longer budget
    run = json.load(open(job / "run_config.json"))
    assert run["config"]["model_size"] == "tiny" and "the run in this job directory (--max-time 1 s" in run["model_size_reason"]
    assert json.load(open(job / "final_metrics.json"))["global_step"] > first


def test_the_plateau_is_the_best_loss_without_the_context():
    tokens = np.array([5, 5, 6, 7, 2, 5, 5, 6, 7, 2] * 100, dtype=np.uint16)  # 2 is </s>: never masked
    p = token_frequencies(tokens, 10, special_ids=[0, 1, 2, 3])
    assert p.tolist() == [0, 0, 0, 0, 0, 0.5, 0.25, 0.25, 0, 0]
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    assert context_free_loss(p, "all-mask") == pytest.approx(entropy)  # only <mask> in view: the frequencies
    # 80-10-10: the best guess given the token in view, enumerated over (label, token in view) pairs
    for p in (p, np.random.default_rng(0).dirichlet(np.full(50, 0.3))):
        v = len(p)
        joint = 0.1 * np.diag(p) + 0.1 * np.outer(p, np.full(v, 1 / v))  # label y (rows), token in view (columns)
        best = joint / joint.sum(0, keepdims=True)
        in_view = -(joint[joint > 0] * np.log(best[joint > 0])).sum() / joint.sum()
        expected = 0.8 * -(p[p > 0] * np.log(p[p > 0])).sum() + 0.2 * in_view
        assert context_free_loss(p, "80-10-10") == pytest.approx(expected, rel=1e-9)
        assert context_free_loss(p, "80-10-10") < context_free_loss(p, "all-mask")
    # a large stream is sampled in slices spread over it, not only its start
    skewed = np.concatenate([np.full(1000, 4), np.arange(5, 1005)]).astype(np.int32)
    assert (token_frequencies(skewed, 1100, [], max_tokens=640) > 0).sum() > 100


def test_the_plateau_exit_is_the_first_interval_clearly_below_it():
    rng = np.random.default_rng(0)
    plateau = 7.6
    curve = [(10, 9.4), (20, 8.1)]  # the fast fall to the plateau
    curve += [(s, plateau + rng.normal(0, 0.12)) for s in range(30, 200, 10)]  # on it, with a 10-step mean's noise
    curve += [(200, 7.30), (210, 7.15), (220, 6.9), (230, 7.3)]
    assert plateau_exit_step(curve, plateau) == 210  # 7.30 is within 5% of 7.6, 7.15 is not
    assert plateau_exit_step(curve[:-3], plateau) is None
    assert plateau_exit_step([(10, plateau * (1 - PLATEAU_MARGIN) - 1e-6)], plateau) == 10


def test_a_fresh_model_starts_on_the_plateau_with_the_unigram_output_bias():
    from training.model import MaskedLMModule

    tokens = np.array([5, 5, 6, 7, 2] * 200 + [8], dtype=np.uint16)
    p = token_frequencies(tokens, 12, special_ids=[0, 1, 2, 3])
    prior = unigram_log_prior(p)
    assert np.allclose(np.exp(prior[[5, 6, 7]]), [0.5, 0.25, 0.25], atol=1e-3)
    unseen = [0, 1, 2, 3, 4, 9, 10, 11]  # and special: the rarest seen token's share, split between them
    assert np.exp(prior[unseen]) == pytest.approx(np.full(8, p[8] / 8))
    module = MaskedLMModule(vocab_size=12, model_size="tiny", hidden_size=16, num_layers=1, num_heads=2)
    with torch.no_grad():  # no random output weights: the logits are the bias alone
        module.model.lm_head.decoder.weight.zero_()
    split = type("Split", (), {"tokens": tokens})()
    trainer = type("T", (), {"datamodule": type("D", (), {"train_split": split})()})()
    frequencies = TrainingTokenFrequencies(special_ids=[0, 1, 2, 3])
    UnigramOutputBias(frequencies).setup(trainer, module, "fit")
    head = module.model.lm_head
    assert torch.equal(head.bias, torch.from_numpy(prior).float()) and head.decoder.bias is head.bias
    # the model's guess before it uses any context: the token frequencies
    guess = module.model(torch.tensor([[0, 4, 2]])).logits[0, 1].softmax(-1)
    assert guess.tolist() == pytest.approx(np.exp(prior) / np.exp(prior).sum(), abs=1e-6)
    assert guess[[5, 6, 7]].tolist() == pytest.approx([0.5, 0.25, 0.25], abs=3e-3)
    UnigramOutputBias(TrainingTokenFrequencies([])).setup(trainer, module, "validate")  # only a fit initialises
    assert torch.equal(head.bias, torch.from_numpy(prior).float())


def test_the_token_frequencies_are_counted_once_for_the_bias_and_the_plateau(monkeypatch):
    from training import plateau

    counted = []
    monkeypatch.setattr(plateau, "token_frequencies", lambda *a: counted.append(a) or token_frequencies(*a))
    module = type("M", (), {"config": type("C", (), {"vocab_size": 12})()})()
    module.model = type("LM", (), {"lm_head": torch.nn.Linear(4, 12)})()
    module.model.lm_head.decoder = module.model.lm_head
    split = type("Split", (), {"tokens": np.array([5, 5, 6, 7] * 50, dtype=np.uint16)})()
    trainer = type("T", (), {"datamodule": type("D", (), {"train_split": split})(), "global_step": 0,
                             "is_global_zero": True})()
    frequencies = TrainingTokenFrequencies(special_ids=[0, 1, 2, 3])
    UnigramOutputBias(frequencies).setup(trainer, module, "fit")
    watch = PlateauWatch(10, frequencies)
    watch.on_train_start(trainer, module)
    assert len(counted) == 1 and watch.plateau_loss == context_free_loss(frequencies(trainer, 12))
    with pytest.raises(ValueError):  # shared, so read-only: one callback cannot change the other's
        frequencies(trainer, 12)[5] = 0
    trainer.datamodule.train_split = type("Split", (), {"tokens": np.array([8] * 10, dtype=np.uint16)})()
    assert frequencies(trainer, 12)[8] == 1 and len(counted) == 2  # another split: counted again


class _Module:
    def __init__(self, losses):
        self.losses, self.first_step_loss, self.taken = losses, torch.tensor(9.5), []

    def interval_losses(self):
        return 10 if self.losses else 0

    def take_interval_loss(self):
        self.taken.append(len(self.losses))
        return self.losses.pop(0)


def test_the_watch_records_first_loss_and_exit_and_keeps_them_across_a_resume(caplog):
    trainer = type("T", (), {"global_step": 0, "is_global_zero": True})()
    watch = PlateauWatch(10, TrainingTokenFrequencies([]))
    watch.plateau_loss, watch._last_step = 7.0, 0
    module = _Module([7.1, 6.9, 6.5, 5.0])
    for batch in range(80):  # two batches a step (--accumulate-grad-batches 2): 40 steps
        trainer.global_step = (batch + 1) // 2
        watch.on_train_batch_end(trainer, module, None, None, batch)
    assert module.taken == [4, 3, 2, 1]  # once an interval of steps, not once a batch
    assert (watch.first_step_loss, watch.exit_step) == (9.5, 30)  # 6.5 < 7 x 0.95; 6.9 is not
    resumed = PlateauWatch(10, TrainingTokenFrequencies([]))
    resumed.load_state_dict(json.loads(json.dumps(watch.state_dict())))
    assert resumed.summary() == {"first_step_loss": 9.5, "unigram_plateau_loss": 7.0, "plateau_exit_step": 30}
    stuck = PlateauWatch(10, TrainingTokenFrequencies([]))
    stuck.plateau_loss, stuck._last_step = 7.0, 0
    trainer.global_step = 10
    stuck.on_train_batch_end(trainer, _Module([7.2]), None, None, 0)
    with caplog.at_level("WARNING", logger="training"):
        assert stuck.summary()["plateau_exit_step"] is None
    assert "ended on the unigram plateau" in caplog.text
    caplog.clear()
    unmeasured = PlateauWatch(10, TrainingTokenFrequencies([]))  # shorter than an interval: no verdict
    unmeasured.plateau_loss = 7.0
    with caplog.at_level("WARNING", logger="training"):
        unmeasured.summary()
    assert "plateau" not in caplog.text


def test_a_run_writes_its_plateau_first_loss_and_mfu(pipeline_run):
    from transformers import AutoConfig

    from training.model import flops_per_token

    metrics = pipeline_run["final_metrics"]
    assert metrics["first_step_loss"] > metrics["unigram_plateau_loss"] > 0
    # vocabulary 1,000: with a zero output bias a fresh model's loss would be near ln(1000) = 6.9; with the unigram
    # one it starts at the frequencies' entropy, a tenth above the plateau (80-10-10's token in view)
    assert metrics["first_step_loss"] < math.log(1000) - 1
    assert metrics["first_step_loss"] == pytest.approx(metrics["unigram_plateau_loss"] / 0.9, rel=0.08)
    assert metrics["val_loss"] < metrics["first_step_loss"] and "plateau_exit_step" in metrics
    peak = devices.cpu_peak_flops("32-true")
    if peak is None:  # not an x86 CPU with AVX2
        return
    model = AutoConfig.from_pretrained(f"{pipeline_run['job']}/model")
    per_second = metrics["train_tokens_per_second"] / peak[0]  # one session: its seconds are the run's
    # the masked share of non-pad tokens is below 30% (<s> and </s> are never masked) and above 20%
    low, high = (per_second * flops_per_token(model, 64, rate) for rate in (0.2, 0.3))
    assert low < metrics["mfu"] < high, (low, metrics["mfu"], high)


def test_the_cpu_peak_counts_threads_lanes_and_clock():
    peak, how = devices.cpu_peak_flops("32-true", threads=2, cpuinfo=AVX2, max_khz=2_000_000)
    assert peak == 2 * 2 * 8 * 2 * 2.0e9 == 128e9 and "8 float32 lanes" in how  # issue 32's 2-core AVX2 CPU
    assert devices.cpu_peak_flops("32-true", 2, AVX2)[0] == 2 * 2 * 8 * 2 * 1.8e9  # clock from /proc/cpuinfo
    assert devices.cpu_peak_flops("32-true", 4, AVX512_BF16, 2_000_000)[0] == 4 * 2 * 16 * 2 * 2.0e9
    assert devices.cpu_peak_flops("bf16-mixed", 4, AVX512_BF16, 2_000_000)[0] == 2 * 4 * 2 * 16 * 2 * 2.0e9
    assert devices.cpu_peak_flops("bf16-mixed", 2, AVX2, 2_000_000)[0] == 128e9  # no native bf16: float32 lanes
    assert devices.cpu_peak_flops("32-true", 2, "flags\t\t: fp asimd\n", 2_000_000) is None  # not x86: unknown
    zen4 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\n" + AVX512_BF16  # AVX-512 on 256-bit units
    assert devices.cpu_peak_flops("32-true", 2, zen4, 2_000_000)[0] == 128e9
