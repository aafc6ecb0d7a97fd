"""What other machines need, checked on this one: no float64 on MPS (Apple GPUs), and datasets that reach
DataLoader workers started by spawn or forkserver (the default on macOS and Python 3.14) as a few kilobytes."""
import multiprocessing
import os
import pickle

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from torch.utils._python_dispatch import TorchDispatchMode

from training import devices, model as model_module
from training.masking import MaskedLMCollator, pad_masked
from training.sequences import KeyedSamples, PackedBlocks, Sentences
from training.token_cache import TokenizedSplit, encode_split


class NoFloat64(TorchDispatchMode):
    """Raises as soon as an operation returns a float64 tensor, as MPS would."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                raise TypeError(f"{func} returned float64, which MPS does not have")
        return out


class GuardedModule(model_module.MaskedLMModule):
    """The module with its own accumulating hooks run under NoFloat64 (Lightning's loop around them is not)."""

    calls: set

    def training_step(self, *args):
        self.calls.add("training_step")
        with NoFloat64():
            return super().training_step(*args)

    def configure_gradient_clipping(self, *args, **kwargs):
        self.calls.add("configure_gradient_clipping")
        with NoFloat64():
            return super().configure_gradient_clipping(*args, **kwargs)

    def on_validation_epoch_start(self):
        self.calls.add("on_validation_epoch_start")
        with NoFloat64():
            return super().on_validation_epoch_start()

    def validation_step(self, *args):
        self.calls.add("validation_step")
        with NoFloat64():
            return super().validation_step(*args)

    def on_validation_epoch_end(self):
        self.calls.add("on_validation_epoch_end")
        with NoFloat64():
            return super().on_validation_epoch_end()


def fit_tiny(tokenizer, module_class=model_module.MaskedLMModule):
    """Three training steps and a validation of a tiny module on the CPU; the module is returned."""
    rng = np.random.default_rng(0)
    seqs = [torch.tensor([0, *rng.integers(5, len(tokenizer), int(rng.integers(10, 40))), 2]) for _ in range(24)]
    train = DataLoader(seqs, batch_size=8, collate_fn=MaskedLMCollator(tokenizer, 0.15, seed=1))
    collator = MaskedLMCollator(tokenizer, 0.15)
    val = DataLoader([collator.mask_fixed(s, i) for i, s in enumerate(seqs)], batch_size=12,
                     collate_fn=lambda items: pad_masked(items, tokenizer.pad_token_id))
    torch.manual_seed(0)
    module = module_class(vocab_size=len(tokenizer), model_size="tiny", hidden_size=32, num_layers=2, num_heads=2,
                          max_steps=3, masked_per_batch=40.0)
    module.calls = set()
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, max_epochs=1, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(module, train, val)
    return module, trainer


def test_accumulator_dtype_is_float64_except_on_mps():
    assert devices.accumulator_dtype(torch.device("cpu")) == torch.float64
    assert devices.accumulator_dtype(torch.device("cuda", 0)) == torch.float64
    assert devices.accumulator_dtype(torch.device("mps")) == torch.float32


def test_training_and_validation_make_no_float64_on_mps(tokenizer, monkeypatch):
    monkeypatch.setattr(model_module, "accumulator_dtype", lambda device: devices.accumulator_dtype(torch.device("mps")))
    module, trainer = fit_tiny(tokenizer, GuardedModule)
    assert module.calls == {"training_step", "configure_gradient_clipping", "on_validation_epoch_start",
                            "validation_step", "on_validation_epoch_end"}
    assert trainer.global_step == 3 and module._val_sums.dtype == torch.float32
    assert np.isfinite(float(trainer.callback_metrics["val/loss"]))


def test_cpu_keeps_float64_sums(tokenizer):
    module, trainer = fit_tiny(tokenizer)
    assert module._val_sums.dtype == torch.float64 and trainer.global_step == 3


@pytest.fixture(scope="module")
def big_split(tmp_path_factory, tokenizer) -> TokenizedSplit:
    """A memory-mapped split of a few megabytes, as step 3 caches it."""
    root = tmp_path_factory.mktemp("big")
    (root / "train.txt").write_text("".join(f"soft blanket {i} pink{' blue' * (i % 9)} bottle\n" for i in range(100_000)))
    split = encode_split([str(root / "train.txt")], os.path.join(tokenizer.name_or_path, "tokenizer.json"),
                         str(root / "cache"), tokenizer.eos_token_id)
    assert split.tokens.nbytes > 2_000_000 and isinstance(split.tokens, np.memmap)
    return split


def datasets_of(split: TokenizedSplit, tokenizer) -> dict:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {"packed": KeyedSamples(PackedBlocks(split, 64, bos), 7),
            "sentences": KeyedSamples(Sentences(split, 64, bos, eos), 7)}


def test_memory_mapped_datasets_pickle_small_and_unpickle_equal(big_split, tokenizer):
    for name, dataset in datasets_of(big_split, tokenizer).items():
        data = pickle.dumps(dataset)
        assert len(data) < 10_000, (name, len(data))
        copy = pickle.loads(data)
        assert len(copy) == len(dataset)
        for i in (0, 1, len(dataset) // 2, len(dataset) - 1):
            (key_a, a), (key_b, b) = dataset[(3, i)], copy[(3, i)]
            assert key_a == key_b and torch.equal(a, b), (name, i)
    in_memory = TokenizedSplit(np.array(big_split.tokens[:1000]), np.array(big_split.offsets[:10]))
    copy = pickle.loads(pickle.dumps(in_memory))  # no directory to reopen: the arrays travel
    assert np.array_equal(copy.tokens, in_memory.tokens) and np.array_equal(copy.offsets, in_memory.offsets)


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_workers_started_by_spawn_or_forkserver_serve_the_same_batches(big_split, tokenizer, context):
    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{context} is not available here")
    dataset = datasets_of(big_split, tokenizer)["packed"]
    sampler = [(3, int(i)) for i in np.random.default_rng(0).permutation(len(dataset))[:80]]  # (epoch, index)

    def batches(**workers) -> list[dict]:
        loader = DataLoader(dataset, batch_size=16, sampler=sampler, collate_fn=MaskedLMCollator(tokenizer, 0.15),
                            **workers)
        return [b for b, _ in zip(loader, range(5))]

    expected = batches(num_workers=0)
    got = batches(num_workers=1, multiprocessing_context=context)
    assert len(got) == len(expected) == 5
    for a, b in zip(expected, got):
        assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
