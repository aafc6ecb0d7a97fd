import math
import os

import numpy as np
import pytest
import torch
from transformers import RobertaForMaskedLM

from training.masking import MaskedLMCollator, pad_masked
from training.model import MaskedLMModule, build_config, masked_lm_loss, perplexity
from training.sequences import FixedMaskedSample, PackedBlocks
from training.token_cache import TokenizedSplit

BOS, PAD, EOS, MASK = 0, 1, 2, 4


def random_sequences(n, vocab, rng):
    seqs = []
    for _ in range(n):
        length = int(rng.integers(10, 120))
        body = rng.integers(5, vocab, size=length)
        seqs.append(torch.tensor([BOS, *body, EOS]))
    return seqs


def test_masking_follows_the_roberta_rule(tokenizer):
    rng = np.random.default_rng(0)
    seqs = random_sequences(2000, len(tokenizer), rng)
    batch = MaskedLMCollator(tokenizer, mlm_probability=0.15, seed=1)(seqs)
    original = torch.full_like(batch["input_ids"], PAD)
    for i, s in enumerate(seqs):
        original[i, : len(s)] = s
    labels, inputs = batch["labels"], batch["input_ids"]
    special = (original == BOS) | (original == EOS) | (original == PAD)
    masked = labels != -100
    assert not (masked & special).any(), "special and pad tokens are never masked"
    assert torch.equal(labels[masked], original[masked]), "labels hold the original token where masked"
    assert (inputs[~masked] == original[~masked]).all(), "unmasked positions are untouched"
    rate = masked.sum().item() / (~special).sum().item()
    assert abs(rate - 0.15) < 0.01
    n = masked.sum().item()
    to_mask = (inputs[masked] == MASK).sum().item() / n
    kept = (inputs[masked] == original[masked]).sum().item() / n
    assert abs(to_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(1 - to_mask - kept - 0.1) < 0.02
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([len(s) for s in seqs]))
    assert batch["input_ids"].shape[1] % 8 == 0


def test_higher_masking_rate(tokenizer):
    seqs = random_sequences(1000, len(tokenizer), np.random.default_rng(1))
    batch = MaskedLMCollator(tokenizer, mlm_probability=0.3, seed=1)(seqs)
    real = sum(len(s) - 2 for s in seqs)
    assert abs((batch["labels"] != -100).sum().item() / real - 0.3) < 0.015


def test_all_mask_rule_masks_every_chosen_token(tokenizer):
    seqs = random_sequences(1000, len(tokenizer), np.random.default_rng(5))
    batch = MaskedLMCollator(tokenizer, mlm_probability=0.4, seed=1, mask_rule="all-mask")(seqs)
    chosen = batch["labels"] != -100
    real = sum(len(s) - 2 for s in seqs)
    assert abs(chosen.sum().item() / real - 0.4) < 0.015
    assert (batch["input_ids"][chosen] == MASK).all(), "every chosen token becomes <mask>"
    assert not (batch["input_ids"][~chosen] == MASK).any()
    # the same draws choose the same positions under either rule: only the replacement differs
    bert = MaskedLMCollator(tokenizer, mlm_probability=0.4, seed=1)(seqs)
    assert torch.equal(bert["labels"], batch["labels"])


def test_a_mask_rule_that_does_not_exist_is_refused_in_one_line():
    from common import UsageError
    from training.config import TrainingConfig, validate_config

    with pytest.raises(UsageError, match="--mask-rule must be one of 80-10-10, all-mask, got 'random'"):
        validate_config(TrainingConfig(job_dir="j", train_path="t", val_path="v", mask_rule="random"))


def test_batch_rate_and_masking_default_to_the_device_and_the_model_size():
    from training.config import TrainingConfig, resolve_defaults
    from training.devices import plan_for_device

    cpu_batch = plan_for_device("cpu", "32-true").batch_size
    gpu_batch = plan_for_device("cuda", capability=(9, 0)).batch_size
    assert (cpu_batch, gpu_batch) == (8, 32)
    given = lambda **k: TrainingConfig(job_dir="j", train_path="t", val_path="v", **k)
    tiny, base = resolve_defaults(given(model_size="tiny"), cpu_batch), resolve_defaults(given(), gpu_batch)
    assert (tiny.batch_size, tiny.lr, base.batch_size, base.lr) == (8, 1e-3, 32, 5e-4)
    assert tiny.mlm_probability == base.mlm_probability == 0.3
    assert resolve_defaults(given(model_size="mini"), cpu_batch).lr == 2e-3
    chosen = resolve_defaults(given(model_size="tiny", batch_size=64, lr=3e-4, mlm_probability=0.15), cpu_batch)
    assert (chosen.batch_size, chosen.lr, chosen.mlm_probability) == (64, 3e-4, 0.15)  # what the user gives is kept


def test_validation_masks_15_percent_whatever_training_masks(pipeline_run, tmp_path):
    from transformers import AutoTokenizer

    from training.data_module import MaskedLMDataModule

    corpus, tokenizer = pipeline_run["corpus"], AutoTokenizer.from_pretrained(pipeline_run["tokenizer"])
    tokenizer_file = os.path.join(pipeline_run["tokenizer"], "tokenizer.json")
    rates = {}
    for rate, rule in ((0.15, "80-10-10"), (0.4, "all-mask")):
        data = MaskedLMDataModule(f"{corpus}/train", f"{corpus}/validation", tokenizer, tokenizer_file,
                                  str(tmp_path / "cache"), mlm_probability=rate, mask_rule=rule, max_val_sentences=0)
        data.prepare_data()
        data.setup("fit")
        val = [data.val_set[i] for i in range(len(data.val_set))]
        rates[rate] = [item[1] for item in val], [item[0] for item in val]
        blocks = [data.train_set[i] for i in range(64)]
        trained = (data.train_collator(blocks)["labels"] != -100).sum().item()
        body = sum(int((~torch.isin(b, torch.tensor(tokenizer.all_special_ids))).sum()) for b in blocks)
        assert abs(trained / body - rate) < 0.02  # training follows --mlm-probability
    # the same validation sentences, with the very same masks, whatever the training rate and rule
    assert all(torch.equal(a, b) for a, b in zip(rates[0.15][0], rates[0.4][0]))
    assert all(torch.equal(a, b) for a, b in zip(rates[0.15][1], rates[0.4][1]))
    labelled = sum(int((labels != -100).sum()) for labels in rates[0.4][0])
    body = sum(len(labels) - 2 for labels in rates[0.4][0])
    assert abs(labelled / body - 0.15) < 0.02
    inputs = torch.cat(rates[0.4][1])[torch.cat(rates[0.4][0]) != -100]
    assert 0.7 < (inputs == MASK).float().mean().item() < 0.9  # validation keeps the 80/10/10 rule


def split_of(seqs) -> TokenizedSplit:
    """A TokenizedSplit holding the bodies of <s> body </s> sequences."""
    tokens = np.array([t for s in seqs for t in (*s[1:-1].tolist(), EOS)], dtype=np.uint16)
    offsets = np.cumsum([0] + [len(s) - 1 for s in seqs])
    return TokenizedSplit(tokens, offsets)


def test_validation_sample_and_masks_are_fixed_by_seed_and_sentence(tokenizer):
    seqs = random_sequences(300, len(tokenizer), np.random.default_rng(2))
    split = split_of(seqs)
    sample = lambda seed, n=100: FixedMaskedSample(split, 128, BOS, EOS, MaskedLMCollator(tokenizer, 0.15), seed, n)
    a, b, c = sample(5), sample(5), sample(6)
    items = lambda d: [d[i] for i in range(len(d))]
    same = lambda u, v: all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(items(u), items(v)))
    assert len(a) == 100 and list(a.indices) == list(b.indices) and set(a.indices) != set(c.indices)
    assert same(a, b) and not same(a, c)
    # the seed reaches the masks themselves: the same sentences, another seed, other masks
    whole5, whole6 = sample(5, 0), sample(6, 0)
    assert list(whole5.indices) == list(whole6.indices) and not same(whole5, whole6)
    lengths = [len(a[j][0]) for j in range(100)]
    assert lengths == sorted(lengths)  # served shortest first: batches of similar lengths
    # A sentence's masks depend on the seed and its index only: the same in a sample of all 300.
    everything = sample(5, 0)
    assert len(everything) == 300 and sorted(everything.indices.tolist()) == list(range(300))
    position = {int(i): j for j, i in enumerate(everything.indices)}
    for j, i in enumerate(a.indices):
        k = position[int(i)]
        assert torch.equal(a[j][0], everything[k][0]) and torch.equal(a[j][1], everything[k][1])
    # Each item follows the masking rule: only body tokens are labelled, with their original ids.
    for k in range(300):
        ids, labels = everything[k]
        original = seqs[int(everything.indices[k])]
        assert torch.equal(labels[labels != -100], original[labels != -100])
        assert labels[0] == -100 and labels[-1] == -100 and torch.equal(ids[labels == -100], original[labels == -100])
    rate = sum(int((everything[k][1] != -100).sum()) for k in range(300)) / sum(len(s) - 2 for s in seqs)
    assert abs(rate - 0.15) < 0.02
    batch = pad_masked(items(a)[:10], PAD)
    assert batch["input_ids"].shape == batch["labels"].shape and batch["input_ids"].shape[1] % 8 == 0
    lengths = torch.tensor([len(a[j][0]) for j in range(10)])
    assert torch.equal(batch["attention_mask"].sum(1), lengths)
    padding = batch["attention_mask"] == 0
    assert (batch["labels"][padding] == -100).all() and (batch["input_ids"][padding] == PAD).all()
    assert batch["masked_total"] == int((batch["labels"] != -100).sum())
    assert len(set(a.indices.tolist())) == 100  # each chosen sentence once


def test_training_masks_are_keyed_by_seed_epoch_and_sample_not_by_batch(tokenizer):
    from training.sequences import KeyedSamples

    seqs = random_sequences(64, len(tokenizer), np.random.default_rng(3))
    keyed = lambda seed, data=seqs: KeyedSamples(data, seed)
    collate = MaskedLMCollator(tokenizer, 0.15)
    rows = lambda batch, width: [(batch["input_ids"][r], batch["labels"][r]) for r in range(width)]
    whole = rows(collate([keyed(1)[(0, i)] for i in range(64)]), 64)
    # the same samples in other batches (other companions, another order) are masked alike
    halves = rows(collate([keyed(1)[(0, i)] for i in range(63, 31, -1)]), 32)
    for r, i in enumerate(range(63, 31, -1)):
        n = len(seqs[i])
        assert torch.equal(halves[r][0][:n], whole[i][0][:n]) and torch.equal(halves[r][1][:n], whole[i][1][:n])
    # different samples of the same length get different masks
    twins = [torch.tensor([BOS, *range(10, 60), EOS])] * 16
    labels = collate([keyed(1, twins)[(0, i)] for i in range(16)])["labels"]
    assert len({tuple((row != -100).nonzero().flatten().tolist()) for row in labels}) > 12
    # another epoch or another seed masks the same sample differently
    other_epoch = rows(collate([keyed(1)[(1, i)] for i in range(64)]), 64)
    other_seed = rows(collate([keyed(2)[(0, i)] for i in range(64)]), 64)
    assert sum(torch.equal(x[1], y[1]) for x, y in zip(whole, other_epoch)) < 8
    assert sum(torch.equal(x[1], y[1]) for x, y in zip(whole, other_seed)) < 8


def test_sentences_are_cut_to_the_sequence_length():
    from training.sequences import Sentences

    seqs = [torch.tensor([BOS, *range(10, 10 + n), EOS]) for n in (3, 6, 7, 30)]
    items = Sentences(split_of(seqs), 8, BOS, EOS)
    assert [len(items[i]) for i in range(4)] == [5, 8, 8, 8]
    assert torch.equal(items[0], seqs[0]) and torch.equal(items[1], seqs[1])  # short ones whole
    assert items[3].tolist() == [BOS, *range(10, 16), EOS]  # long ones cut, still closed by </s>


def test_random_replacements_span_the_vocabulary(tokenizer):
    seqs = [torch.tensor([BOS, *([40] * 200), EOS])] * 200  # one repeated word: a replacement is easy to spot
    batch = MaskedLMCollator(tokenizer, mlm_probability=0.5, seed=4)(seqs)
    masked = batch["labels"] != -100
    replaced = batch["input_ids"][masked & (batch["input_ids"] != MASK) & (batch["input_ids"] != 40)]
    assert len(replaced) > 1000
    vocab = len(tokenizer)
    assert abs(replaced.float().mean().item() - vocab / 2) < 0.05 * vocab and replaced.max() >= 0.9 * vocab


def test_packing_makes_full_blocks_with_separators(tmp_path):
    sentences = [[10, 11, 12], [20, 21], [30, 31, 32, 33], [40]]
    tokens = np.array([t for s in sentences for t in (*s, EOS)], dtype=np.uint16)
    offsets = np.cumsum([0] + [len(s) + 1 for s in sentences])
    split = TokenizedSplit(tokens, offsets)
    assert split.sentence(2).tolist() == [30, 31, 32, 33]
    blocks = PackedBlocks(split, length=6, bos_id=BOS)
    got = [blocks[i].tolist() for i in range(len(blocks))]
    assert got[:2] == [[BOS, 10, 11, 12, EOS, 20], [BOS, 21, EOS, 30, 31, 32]]
    assert all(len(b) == 6 for b in got[:-1])
    assert [t for b in got for t in b[1:]] == tokens.tolist()  # nothing lost, nothing repeated


def test_sparse_loss_and_gradients_equal_the_full_model_on_padded_batches(tokenizer):
    torch.manual_seed(0)
    model = RobertaForMaskedLM(build_config(len(tokenizer), "tiny", 64, 2, 2))
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.eval()
    seqs = random_sequences(8, len(tokenizer), np.random.default_rng(3))
    batch = MaskedLMCollator(tokenizer, 0.15, seed=3)(seqs)
    assert batch["masked_total"] == int((batch["labels"] != -100).sum())
    assert batch["masked_most"] == int((batch["labels"] != -100).sum(1).max())
    params = list(model.parameters())
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    full = model(**inputs).loss
    full_grads = torch.autograd.grad(full, params)
    # With the collator's counts (no read-back from the device) and without them (read back): same result.
    for counts in ({"masked_most": batch["masked_most"], "masked_total": batch["masked_total"]}, {}):
        sparse, correct, n = masked_lm_loss(model, **inputs, **counts)
        sparse_grads = torch.autograd.grad(sparse, params)
        assert torch.allclose(sparse, full, atol=1e-5)
        for (name, _), a, b in zip(model.named_parameters(), full_grads, sparse_grads):
            assert torch.allclose(a, b, atol=1e-6), name
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"] != -100
    assert correct == (logits[mask].argmax(-1) == batch["labels"][mask]).sum() and n == mask.sum()


def test_perplexity_is_exp_of_loss():
    assert perplexity(0.0) == 1.0
    assert perplexity(2.5) == pytest.approx(math.exp(2.5))
    assert perplexity(1e4) == math.inf


def test_no_weight_decay_on_bias_and_layernorm():
    module = MaskedLMModule(vocab_size=300, model_size="tiny", hidden_size=32, num_layers=1, num_heads=2, max_steps=10)
    module.trainer = None
    opt = module.configure_optimizers()["optimizer"]
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    for name, p in module.model.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2 and "LayerNorm" not in name), name
    assert module.config.max_position_embeddings == 514 and module.config.pad_token_id == PAD


def test_model_config_of_each_size_carries_the_tokenizer_ids():
    expected = {"mini": (128, 4, 2), "tiny": (256, 4, 4), "small": (512, 4, 8), "base": (768, 4, 12)}
    for size, (hidden, layers, heads) in expected.items():
        c = build_config(8000, size, pad_token_id=1, bos_token_id=0, eos_token_id=2)
        assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (hidden, layers, heads)
        assert c.intermediate_size == 4 * hidden and c.max_position_embeddings == 514 and c.type_vocab_size == 1
        assert (c.vocab_size, c.pad_token_id, c.bos_token_id, c.eos_token_id) == (8000, 1, 0, 2)
    c = build_config(300, "tiny", hidden_size=64, num_layers=2, num_heads=2, pad_token_id=7)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.pad_token_id) == (64, 2, 2, 7)
    with pytest.raises(ValueError):
        build_config(300, "tiny", hidden_size=65, num_heads=2)
