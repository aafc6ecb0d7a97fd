"""The CUDA path, checked on CPU: the device plan, and training with exactly the optimizer, precision
and clipping a GPU gets; non-finite steps skipped without a host sync; the strategies we name."""
import dataclasses
import json
import logging
import os
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY_MODEL, run_script
from training import devices, job, model as model_module
from training.run_training import build_parser, config_from_args


def cuda_plan_on_cpu(**changes) -> devices.DevicePlan:
    """What an H100 gets, with pinning off (nothing to pin for on a CPU)."""
    plan = devices.plan_for_device("cuda", capability=(9, 0), processes_per_node=1)
    return dataclasses.replace(plan, pin_memory=False, **changes)


def test_the_device_plan_for_each_kind_of_device(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    h100 = devices.plan_for_device("cuda", capability=(9, 0), log_every_n_steps=10)
    assert (h100.precision, h100.fused_adamw, h100.attention, h100.pin_memory, h100.tf32) == (
        "bf16-mixed", True, "sdpa", True, True)
    assert h100.num_workers == 4 and h100.check_every_n_steps == 10 and h100.batch_size == 32
    assert devices.plan_for_device("cuda", capability=(9, 0), processes_per_node=8).num_workers == 1
    v100 = devices.plan_for_device("cuda", capability=(7, 0))  # bf16 only emulated there
    assert (v100.precision, v100.fused_adamw, v100.tf32) == ("16-mixed", False, False)  # the scaler unscales first
    fp32 = devices.plan_for_device("cuda", "32-true", capability=(8, 0))
    assert fp32.tf32 and fp32.fused_adamw
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    cpu = devices.plan_for_device("cpu")
    assert (cpu.precision, cpu.fused_adamw, cpu.attention, cpu.num_workers, cpu.pin_memory, cpu.check_every_n_steps) == (
        "32-true", True, "eager", 0, False, 1)
    cpu16 = devices.plan_for_device("cpu", "16-mixed")  # Lightning runs it as bf16-mixed: no scaler, so fused
    assert (cpu16.precision, cpu16.fused_adamw) == ("bf16-mixed", True)
    assert not devices.plan_for_device("mps").fused_adamw
    assert cpu.batch_size == 8  # more steps for the same tokens where a batch's size does not change its speed
    assert devices.plan_for_device("cpu", "bf16-mixed", "sdpa", 3).num_workers == 3


def test_peak_flops_are_the_dense_figures_of_each_hopper_chip():
    names = {"NVIDIA H100 80GB HBM3": "h100 sxm", "NVIDIA H100 PCIe": "h100 pcie", "NVIDIA H100 NVL": "h100 nvl",
             "NVIDIA H200": "h200 sxm", "NVIDIA H200 NVL": "h200 nvl", "NVIDIA A100-SXM4-80GB": None}
    assert {name: devices.hopper_chip(name) for name in names} == names
    assert devices.HOPPER_PEAK_FLOPS["h100 sxm"][0] == 989.4e12 and devices.HOPPER_PEAK_FLOPS["h100 nvl"][0] < 900e12
    assert devices.peak_flops(torch.device("mps"), "32-true") is None  # unknown: no MFU rather than a wrong one
    assert devices.peak_flops(torch.device("cpu"), "bf16-mixed", override_tflops=300) == (300e12, "--peak-tflops")


def test_peak_flops_on_a_gpu_give_the_figure_and_where_it_came_from(monkeypatch):
    from lightning_fabric.utilities import throughput

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert devices.peak_flops(cuda, "bf16-mixed") == (989.4e12, "h100 sxm's datasheet")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(throughput, "get_available_flops", lambda device, dtype: 312e12)
    assert devices.peak_flops(cuda, "bf16-mixed") == (312e12, "Lightning's table")
    monkeypatch.setattr(throughput, "get_available_flops", lambda device, dtype: None)  # a chip it does not list
    assert devices.peak_flops(cuda, "bf16-mixed") is None


def test_mfu_counts_the_masking_rate_measured(tokenizer):
    from training.masking import MaskedLMCollator
    from training.model import build_config, flops_per_token

    seqs = [torch.tensor([0, *range(10, 136), 2]) for _ in range(64)]
    batch = MaskedLMCollator(tokenizer, 0.15, seed=0)(seqs)
    rate = batch["masked_total"] / int(batch["attention_mask"].sum())
    assert 0.12 < rate < 0.15  # <s> and </s> are never masked
    config = build_config(len(tokenizer), "tiny")
    assert flops_per_token(config, 128, rate) < flops_per_token(config, 128, 0.15)


def train_with_plan(monkeypatch, tmp_path, pipeline_run, plan, *extra):
    monkeypatch.setattr(job, "plan_for_device", lambda *a, **k: plan)
    corpus = pipeline_run["corpus"]
    args = build_parser().parse_args([
        "--job-dir", str(tmp_path / "job"), "--path-to-train-set", f"{corpus}/train", "--path-to-val-set",
        f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"], *TINY_MODEL,
        "--accelerator", "cpu", "--no-progress", "--validate-every-n-steps", "1000", *extra])
    return job.train(config_from_args(args))


def test_cuda_optimizer_precision_and_clipping_train_on_cpu(monkeypatch, tmp_path, pipeline_run):
    """The configuration that crashed at the first step on GPUs: fused AdamW, bf16-mixed, clipping 1.0."""
    plan = cuda_plan_on_cpu()
    assert (plan.precision, plan.fused_adamw) == ("bf16-mixed", True)
    built = []
    original = model_module.MaskedLMModule.configure_optimizers
    monkeypatch.setattr(model_module.MaskedLMModule, "configure_optimizers",
                        lambda self: built.append(original(self)) or built[-1])
    metrics = train_with_plan(monkeypatch, tmp_path, pipeline_run, plan, "--max-steps", "12", "--lr", "2e-3")
    optimizer = built[0]["optimizer"]
    assert optimizer.defaults["fused"] is True and metrics["global_step"] == 12
    assert all(int(s["step"]) == 12 for s in optimizer.state.values())  # every step updated: none skipped
    card = (tmp_path / "job" / "model" / "README.md").read_text()
    assert "- precision: bf16-mixed" in card and "- attention: sdpa" in card


@pytest.mark.parametrize("fused", [True, False])
def test_clipping_applies_with_and_without_the_fused_optimizer(monkeypatch, tmp_path, pipeline_run, fused):
    """Gradients clipped to a norm of 1e-12 are far below AdamW's eps: the weights barely move."""
    plan = cuda_plan_on_cpu(fused_adamw=fused)
    moved = {}
    for clip in ("0", "1e-12"):
        before = {}

        def keep_initial(self, stage, _setup=model_module.MaskedLMModule.setup):
            if not before:  # setup runs again for the final validation
                before.update({k: v.detach().clone() for k, v in self.model.state_dict().items()})
            return _setup(self, stage)

        monkeypatch.setattr(model_module.MaskedLMModule, "setup", keep_initial)
        train_with_plan(monkeypatch, tmp_path / clip, pipeline_run, plan, "--max-steps", "3", "--lr", "1e-2",
                        "--gradient-clip-val", clip)
        after = torch.load(tmp_path / clip / "job" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        name = "model.roberta.encoder.layer.0.attention.self.query.weight"
        moved[clip] = (after[name].float() - before[name[len("model."):]]).abs().max().item()
    assert moved["0"] > 1e-3 and moved["1e-12"] < 1e-4, moved


@pytest.mark.parametrize("fused_before, fused_now", [(False, True), (True, False)])
def test_a_run_resumes_with_its_own_plans_optimizer(monkeypatch, tmp_path, pipeline_run, fused_before, fused_now):
    """A checkpoint of a foreach AdamW (CPU runs before fused became their plan, 16-mixed GPUs) resumed under a
    fused plan, and the other way round: the optimizer is the plan's and the run reaches its steps."""
    built = []
    original = model_module.MaskedLMModule.configure_optimizers
    monkeypatch.setattr(model_module.MaskedLMModule, "configure_optimizers",
                        lambda self: built.append(original(self)) or built[-1])
    train_with_plan(monkeypatch, tmp_path, pipeline_run, cuda_plan_on_cpu(fused_adamw=fused_before), "--max-steps", "3")
    metrics = train_with_plan(monkeypatch, tmp_path, pipeline_run, cuda_plan_on_cpu(fused_adamw=fused_now),
                              "--max-steps", "6")
    optimizer = built[-1]["optimizer"]
    assert metrics["global_step"] == 6
    assert all(bool(group["fused"]) == fused_now for group in optimizer.param_groups)
    assert all(int(s["step"]) == 6 for s in optimizer.state.values())


def test_a_resumed_run_trains_with_the_rate_and_decay_it_is_given(monkeypatch, tmp_path, pipeline_run):
    """Optimizer and scheduler states restore the saved rates and decay; a new --lr or --weight-decay wins."""
    built = []
    original = model_module.MaskedLMModule.configure_optimizers
    monkeypatch.setattr(model_module.MaskedLMModule, "configure_optimizers",
                        lambda self: built.append(original(self)) or built[-1])
    constant = ("--lr-schedule", "constant", "--warmup-ratio", "0")
    train_with_plan(monkeypatch, tmp_path, pipeline_run, cuda_plan_on_cpu(), "--max-steps", "3", "--lr", "1e-3", *constant)
    metrics = train_with_plan(monkeypatch, tmp_path, pipeline_run, cuda_plan_on_cpu(), "--max-steps", "5", "--lr", "1e-4",
                              "--weight-decay", "0.1", *constant)
    optimizer, scheduler = built[-1]["optimizer"], built[-1]["lr_scheduler"]["scheduler"]
    assert metrics["global_step"] == 5
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-4])
    assert scheduler.base_lrs == pytest.approx([1e-4, 1e-4])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def poison_step(monkeypatch, bad_call: int, record: dict, rank: int | None = None) -> None:
    """Make the `bad_call`-th training loss NaN; record whether the weights moved across each step."""
    real = model_module.masked_lm_loss
    calls = {"n": 0}

    def loss(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        if not torch.is_grad_enabled():  # validation
            return result
        calls["n"] += 1
        weights = torch.cat([p.detach().flatten().float() for p in model.parameters()])
        if "previous" in record:
            record.setdefault("moved", []).append(not torch.equal(weights, record["previous"]))
        record["previous"] = weights
        if calls["n"] == bad_call and (rank is None or torch.distributed.get_rank() == rank):
            return result[0] * float("nan"), result[1], result[2]
        return result

    monkeypatch.setattr(model_module, "masked_lm_loss", loss)


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_is_skipped_exactly(monkeypatch, tmp_path, pipeline_run, fused):
    record: dict = {}
    poison_step(monkeypatch, 3, record)
    train_with_plan(monkeypatch, tmp_path, pipeline_run, cuda_plan_on_cpu(fused_adamw=fused, check_every_n_steps=2),
                    "--max-steps", "6", "--log-every-n-steps", "2", "--warmup-ratio", "0")  # step 1 at the peak rate
    # moved[i] says whether step i + 1 changed the weights: step 3 (index 2) did not, the others did.
    assert record["moved"] == [True, True, False, True, True], record["moved"]
    events = EventAccumulator(str(tmp_path / "job" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/skipped_steps")] == [1.0]


def test_a_run_of_non_finite_steps_stops_with_a_clear_message(monkeypatch, tmp_path, pipeline_run):
    real = model_module.masked_lm_loss
    monkeypatch.setattr(model_module, "masked_lm_loss",
                        lambda *a, **k: (lambda r: (r[0] * float("nan"), r[1], r[2]))(real(*a, **k)))
    # Read back every 4 steps: the run of 3 is seen at the first read, not 37 steps later.
    with pytest.raises(model_module.NonFiniteLossError, match=r"for 4 steps in a row \(by step 4\).*lower --lr"):
        train_with_plan(monkeypatch, tmp_path, pipeline_run, cuda_plan_on_cpu(check_every_n_steps=4),
                        "--max-steps", "40", "--max-bad-steps", "3", "--log-every-n-steps", "4")


DDP_RUNNER = """
import json, sys
import torch
sys.path.insert(0, {tests!r})
import pytest
from test_gpu_path import poison_step
from training.run_training import main

record = {{}}
mp = pytest.MonkeyPatch()
poison_step(mp, 3, record, rank=0)
try:
    main(sys.argv[1:])
finally:
    if torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
        weights = record["previous"]
        json.dump({{"moved": record["moved"], "checksum": float(weights.double().sum()), "first": weights[:5].tolist()}},
                  open({out!r} + f"/rank{{rank}}.json", "w"))
"""


def test_a_non_finite_step_on_one_ddp_rank_is_skipped_on_all(tmp_path, pipeline_run):
    script = tmp_path / "ddp_nan.py"
    script.write_text(DDP_RUNNER.format(tests=os.path.join(REPO, "tests"), out=str(tmp_path)))
    corpus = pipeline_run["corpus"]
    run_script(str(script), "--job-dir", str(tmp_path / "job"), "--path-to-train-set", f"{corpus}/train",
               "--path-to-val-set", f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"],
               *TINY_MODEL, "--accelerator", "cpu", "--no-progress", "--devices", "2", "--strategy", "ddp",
               "--max-steps", "5", "--validate-every-n-steps", "1000", "--log-every-n-steps", "1", "--warmup-ratio", "0")
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    assert ranks[0]["moved"] == ranks[1]["moved"] == [True, True, False, True], ranks
    assert ranks[0]["first"] == ranks[1]["first"] and ranks[0]["checksum"] == ranks[1]["checksum"]


def test_only_tested_strategies_are_offered(caplog):
    readme = open(os.path.join(REPO, "README.md")).read()
    named = set(re.findall(r"--strategy[ `]+([a-z_]+)", readme))
    help_text = build_parser().format_help()
    named |= set(re.findall(r"\b(auto|ddp\w*|fsdp\w*|deepspeed\w*)\b", help_text.split("--strategy", 1)[1][:300]))
    assert named and named <= set(devices.TESTED_STRATEGIES), named
    tests = "".join(open(os.path.join(REPO, "tests", f)).read() for f in os.listdir(os.path.join(REPO, "tests"))
                    if f.endswith(".py"))
    assert all(f'"--strategy", "{s}"' in tests for s in devices.TESTED_STRATEGIES if s != "auto")
    with caplog.at_level(logging.WARNING, logger="training"):
        devices.check_strategy("ddp")
        assert not caplog.records
        devices.check_strategy("fsdp")
    assert len(caplog.records) == 1 and "--strategy fsdp is not tested" in caplog.records[0].getMessage()
