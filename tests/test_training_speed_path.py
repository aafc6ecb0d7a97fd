"""The fast training path: packed blocks with per-sentence attention, the token cache, precision choice."""
import os

import numpy as np
import pytest
import torch
from transformers import RobertaForMaskedLM

from conftest import TINY_MODEL
from tokenizer.fitting import fit_tokenizer, save_tokenizer
from training import devices
from training.masking import MaskedLMCollator, sentence_segments
from training.model import build_config, masked_lm_loss, sentence_attention_mask
from training.token_cache import encode_split

BOS, PAD, EOS = 0, 1, 2


def test_positions_restart_and_segments_split_after_each_separator():
    block = torch.tensor([[BOS, 10, 11, EOS, 20, 21, 22, EOS, 30], [BOS, 31, EOS, 40, EOS, PAD, PAD, PAD, PAD]])
    real = block != PAD
    segments, positions = sentence_segments(block, real, EOS, PAD)
    assert segments.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2], [0, 0, 0, 1, 1, -1, -1, -1, -1]]
    # RoBERTa positions start at pad + 1; a later sentence starts where a word after <s> would.
    assert positions.tolist() == [[2, 3, 4, 5, 3, 4, 5, 6, 3], [2, 3, 4, 3, 4, 1, 1, 1, 1]]


def test_collator_takes_segments_from_the_unmasked_block(tokenizer):
    rng = np.random.default_rng(0)
    blocks = [torch.tensor([BOS, *[int(t) if t % 7 else EOS for t in rng.integers(5, 400, 63)]]) for _ in range(1024)]
    batch = MaskedLMCollator(tokenizer, 0.5, seed=1, packed=True)(blocks)  # a high rate: some words become a random </s>
    original = torch.stack(blocks)
    segments, positions = sentence_segments(original, torch.ones_like(original, dtype=torch.bool), EOS, PAD)
    assert torch.equal(batch["segment_ids"], segments) and torch.equal(batch["position_ids"], positions)
    assert ((batch["input_ids"] == EOS) & (original != EOS)).any(), "the test needs a masked word turned into </s>"


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_packed_sentence_sees_only_itself(implementation):
    torch.manual_seed(0)
    config = build_config(300, "tiny", 64, 2, 2)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = RobertaForMaskedLM(config).eval()
    model.set_attn_implementation(implementation)
    first, second, third = [11, 12, 13, EOS], [21, 22, EOS], [31, 32, 33, 34, EOS]

    def hidden(block):
        ids = torch.tensor([block])
        segments, positions = sentence_segments(ids, torch.ones_like(ids, dtype=torch.bool), EOS, PAD)
        mask = sentence_attention_mask(segments, implementation)
        with torch.no_grad():
            return model.roberta(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state[0]

    packed = hidden([BOS, *first, *second, *third])
    changed = hidden([BOS, *first, 25, 26, EOS, *third])  # another middle sentence of the same length
    assert torch.allclose(packed[:5], changed[:5], atol=1e-5) and torch.allclose(packed[8:], changed[8:], atol=1e-5)
    assert not torch.allclose(packed[5:8], changed[5:8], atol=1e-3)
    with torch.no_grad():  # the first sentence is computed exactly as if it stood alone
        alone = model.roberta(input_ids=torch.tensor([[BOS, *first]])).last_hidden_state[0]
    assert torch.allclose(packed[:5], alone, atol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_sparse_loss_and_gradients_equal_the_full_model_on_packed_blocks(tokenizer, implementation):
    torch.manual_seed(0)
    config = build_config(len(tokenizer), "tiny", 64, 3, 2)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = RobertaForMaskedLM(config)
    model.set_attn_implementation(implementation)
    rng = np.random.default_rng(4)
    blocks = [torch.tensor([BOS, *[int(t) if t % 5 else EOS for t in rng.integers(5, len(tokenizer), 31)]]) for _ in range(8)]
    batch = MaskedLMCollator(tokenizer, 0.15, seed=3, packed=True)(blocks)
    mask = sentence_attention_mask(batch["segment_ids"], implementation)
    params = list(model.parameters())
    full = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                 labels=batch["labels"]).loss
    full_grads = torch.autograd.grad(full, params)
    sparse, correct, n = masked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                        segment_ids=batch["segment_ids"], position_ids=batch["position_ids"],
                                        masked_most=batch["masked_most"], masked_total=batch["masked_total"])
    sparse_grads = torch.autograd.grad(sparse, params)
    assert torch.allclose(sparse, full, atol=1e-5) and n == (batch["labels"] != -100).sum()
    for (name, _), a, b in zip(model.named_parameters(), full_grads, sparse_grads):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_batch_without_masked_tokens_gives_zero_loss(tokenizer):
    model = RobertaForMaskedLM(build_config(len(tokenizer), "tiny", 64, 2, 2))
    ids = torch.tensor([[BOS, 10, 11, EOS], [BOS, 12, EOS, PAD]])
    loss, correct, n = masked_lm_loss(model, ids, (ids != PAD).long(), torch.full_like(ids, -100))
    assert loss.item() == 0.0 and int(n) == 0 and int(correct) == 0


def test_token_cache_is_reused_and_rebuilt_when_the_tokenizer_or_data_change(tmp_path, monkeypatch):
    corpus = tmp_path / "train"
    corpus.mkdir()
    (corpus / "a.txt").write_text("".join(f"soft cotton blanket {i}\n" for i in range(200)))
    tokenizers = []
    for size in (265, 275):  # just above the 261 bytes and specials: two different tokenizers
        save_tokenizer(fit_tokenizer([str(corpus / "a.txt")], vocab_size=size, show_progress=False), str(tmp_path / f"t{size}"))
        tokenizers.append(str(tmp_path / f"t{size}" / "tokenizer.json"))
    assert open(tokenizers[0]).read() != open(tokenizers[1]).read()
    files, cache = [str(corpus / "a.txt")], str(tmp_path / "cache")
    first = encode_split(files, tokenizers[0], cache, EOS)
    assert first.tokens.dtype == np.uint16 and len(first) == 200 and first.tokens[first.offsets[1] - 1] == EOS

    import tokenizers as hf_tokenizers

    def no_encoding(path):
        raise AssertionError("the cache should have been reused")

    with monkeypatch.context() as m:
        m.setattr(hf_tokenizers.Tokenizer, "from_file", no_encoding)
        again = encode_split(files, tokenizers[0], cache, EOS)
    assert again.directory == first.directory and np.array_equal(again.tokens, first.tokens)
    other = encode_split(files, tokenizers[1], cache, EOS)  # another tokenizer: another entry
    assert other.directory != first.directory
    (corpus / "a.txt").write_text("".join(f"soft cotton blanket {i}\n" for i in range(150)))
    changed = encode_split(files, tokenizers[0], cache, EOS)  # edited data: another entry
    assert changed.directory not in (first.directory, other.directory) and len(changed) == 150
    assert len(os.listdir(cache)) == 3  # no staging directories left behind


def test_precision_auto_measures_bf16_and_falls_back_to_32_bit(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    assert devices.plan_for_device("cpu").precision == "32-true"
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda: 1.05)  # has the flag, but bf16 does not pay
    assert devices.plan_for_device("cpu").precision == "32-true"
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda: 3.0)
    assert devices.plan_for_device("cpu").precision == "bf16-mixed"
    assert devices.plan_for_device("cpu", "32-true").precision == "32-true"


def test_training_without_bf16_runs_in_32_bit(tmp_path, monkeypatch, pipeline_run):
    from training.run_training import build_parser, config_from_args
    from training.job import train

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    corpus = pipeline_run["corpus"]
    args = build_parser().parse_args([
        "--job-dir", str(tmp_path / "job"), "--path-to-train-set", f"{corpus}/train", "--path-to-val-set",
        f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"], *TINY_MODEL, "--max-steps", "6",
        "--accelerator", "cpu", "--no-progress"])
    metrics = train(config_from_args(args))
    assert np.isfinite(metrics["val_loss"]) and metrics["global_step"] == 6
    card = (tmp_path / "job" / "model" / "README.md").read_text()
    assert "- precision: 32-true" in card and "- attention: eager" in card


def test_token_cache_built_in_chunks_equals_one_built_at_once(tmp_path, tokenizer):
    corpus = tmp_path / "train"
    corpus.mkdir()
    lines = [f"soft cotton blanket {i} pink" if i % 7 else f"baby bottle {i}" for i in range(500)]
    (corpus / "a.txt").write_text("\n".join(lines[:300]) + "\n\n")  # a blank line is skipped
    (corpus / "b.txt").write_text("\n".join(lines[300:]) + "\n")
    files = [str(corpus / "a.txt"), str(corpus / "b.txt")]
    tokenizer_file = os.path.join(tokenizer.name_or_path, "tokenizer.json")
    small = encode_split(files, tokenizer_file, str(tmp_path / "c1"), EOS, chunk_bytes=100)  # ~4 lines a chunk
    whole = encode_split(files, tokenizer_file, str(tmp_path / "c2"), EOS, chunk_bytes=1 << 30)
    assert np.array_equal(small.tokens, whole.tokens) and np.array_equal(small.offsets, whole.offsets)
    expected = [tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines]
    assert len(small) == 500 and [small.sentence(i).tolist() for i in range(500)] == expected
    assert small.tokens.size == sum(len(e) + 1 for e in expected) and small.tokens[-1] == EOS
    assert small.lengths().tolist() == [len(e) + 1 for e in expected]
