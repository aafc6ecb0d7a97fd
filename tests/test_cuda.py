"""On a CUDA GPU only (skipped elsewhere; bench/gpu_check.sh runs them): the device plan the GPU gets,
a packed sentence alone with its SDPA mask in bf16, the sparse loss against the full model, and a
few training steps with the plan, clipping and a non-finite step skipped on the device."""
import json
import os

import numpy as np
import pytest
import torch
from transformers import RobertaForMaskedLM

from conftest import TINY_MODEL, run_script
from training import devices
from training.masking import MaskedLMCollator, sentence_segments
from training.model import build_config, masked_lm_loss, sentence_attention_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")
BOS, PAD, EOS = 0, 1, 2


def test_the_plan_of_this_gpu():
    capability = torch.cuda.get_device_capability()
    plan = devices.plan_for_device("cuda")
    expected = "bf16-mixed" if capability >= (8, 0) else "16-mixed"
    assert (plan.precision, plan.attention, plan.pin_memory) == (expected, "sdpa", True)
    assert plan.fused_adamw == (capability >= (8, 0))


def test_a_packed_sentence_sees_only_itself_with_sdpa_in_bf16():
    torch.manual_seed(0)
    config = build_config(300, "tiny", 64, 2, 2)
    model = RobertaForMaskedLM(config).cuda().eval()
    model.set_attn_implementation("sdpa")
    first, middle = [11, 12, 13, EOS], [21, 22, EOS]

    def hidden(block):
        ids = torch.tensor([block]).cuda()
        segments, positions = sentence_segments(ids, torch.ones_like(ids, dtype=torch.bool), EOS, PAD)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            return model.roberta(input_ids=ids, attention_mask=sentence_attention_mask(segments, "sdpa"),
                                 position_ids=positions).last_hidden_state[0].float()

    packed, changed = hidden([BOS, *first, *middle, 31, EOS]), hidden([BOS, *first, 25, 26, EOS, 31, EOS])
    assert torch.allclose(packed[:5], changed[:5], atol=1e-2)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        alone = model.roberta(input_ids=torch.tensor([[BOS, *first]]).cuda()).last_hidden_state[0].float()
    assert torch.allclose(packed[:5], alone, atol=5e-2)


def test_sparse_loss_equals_the_full_model_on_the_gpu(tokenizer, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # float32 against float32
    torch.manual_seed(0)
    model = RobertaForMaskedLM(build_config(len(tokenizer), "tiny", 64, 3, 2)).cuda()
    model.set_attn_implementation("sdpa")
    rng = np.random.default_rng(4)
    blocks = [torch.tensor([BOS, *[int(t) if t % 5 else EOS for t in rng.integers(5, len(tokenizer), 31)]])
              for _ in range(8)]
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v
             for k, v in MaskedLMCollator(tokenizer, 0.15, seed=3, packed=True)(blocks).items()}
    mask = sentence_attention_mask(batch["segment_ids"], "sdpa")
    full = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                 labels=batch["labels"]).loss
    sparse, _, _ = masked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                  segment_ids=batch["segment_ids"], position_ids=batch["position_ids"],
                                  masked_most=batch["masked_most"], masked_total=batch["masked_total"])
    assert torch.allclose(sparse, full, atol=1e-4)


def test_training_on_the_gpu_with_its_plan(tmp_path, pipeline_run):
    corpus, job = pipeline_run["corpus"], tmp_path / "job"
    run_script("training/run_training.py", "--job-dir", str(job), "--path-to-train-set", f"{corpus}/train",
               "--path-to-val-set", f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"],
               *TINY_MODEL, "--max-steps", "60", "--validate-every-n-steps", "20", "--lr", "2e-3",
               "--accelerator", "gpu", "--devices", "1", "--no-progress")
    metrics = json.load(open(job / "final_metrics.json"))
    card = (job / "model" / "README.md").read_text()
    assert metrics["global_step"] == 60 and metrics["val_loss"] < 6.5, metrics
    assert "- attention: sdpa" in card and "- precision: bf16-mixed" in card
    assert os.path.exists(job / "checkpoints" / "last.ckpt")
