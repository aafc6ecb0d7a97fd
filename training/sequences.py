"""The datasets: a tokenised split as training sequences (packed blocks or sentences) and the validation sample."""
import numpy as np
import torch
from torch.utils.data import Dataset

from training.masking import TRAIN_MASKS, VALIDATION_MASKS, MaskedLMCollator, mask_key
from training.token_cache import TokenizedSplit


class PackedBlocks(Dataset):
    """Consecutive sentences (separated by </s>) cut into blocks of exactly `length` tokens, each led by <s>.

    RoBERTa's FULL-SENTENCES packing: no padding except in the very last block.
    """

    def __init__(self, split: TokenizedSplit, length: int, bos_id: int) -> None:
        self.split, self.step, self.bos_id = split, length - 1, bos_id  # the split, not its array: pickles small

    def __len__(self) -> int:
        return -(-len(self.split.tokens) // self.step)

    def __getitem__(self, i: int) -> torch.Tensor:
        chunk = self.split.tokens[i * self.step : (i + 1) * self.step].astype(np.int64)
        return torch.from_numpy(np.concatenate(([self.bos_id], chunk)))


class Sentences(Dataset):
    """One sentence per sequence: <s> sentence </s>, truncated to `length` tokens."""

    def __init__(self, split: TokenizedSplit, length: int, bos_id: int, eos_id: int) -> None:
        self.split, self.max_body, self.bos_id, self.eos_id = split, length - 2, bos_id, eos_id

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> torch.Tensor:
        body = self.split.sentence(i)[: self.max_body].astype(np.int64)
        return torch.from_numpy(np.concatenate(([self.bos_id], body, [self.eos_id])))


class KeyedSamples(Dataset):
    """The training set served as (mask key, sequence), for indices (epoch, i) from TrainingStream."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: tuple[int, int]) -> tuple[int, torch.Tensor]:
        epoch, i = index
        return mask_key(self.seed, TRAIN_MASKS, epoch, i), self.dataset[i]


class FixedMaskedSample(Dataset):
    """The validation set: up to `max_sentences` sentences of the split (0: all), one per sequence, each
    masked with a generator keyed by the seed and the sentence's index in the split.

    The sample and its masks depend only on the split and the seed: the same at every validation and
    in every run, whatever the batch size, device count or workers, and in `run_evaluation.py`. Items are
    masked when read, so memory and time follow the sample, not the split.
    """

    def __init__(self, split: TokenizedSplit, length: int, bos_id: int, eos_id: int, collator: MaskedLMCollator,
                 seed: int, max_sentences: int = 10_000) -> None:
        self.sentences, self.collator, self.seed = Sentences(split, length, bos_id, eos_id), collator, seed
        n = len(split)
        if 0 < max_sentences < n:
            chosen = np.random.default_rng([seed, 2]).choice(n, max_sentences, replace=False)
            lengths = split.offsets[chosen + 1] - split.offsets[chosen]
        else:
            chosen, lengths = np.arange(n), split.lengths()
        # Shortest first: batches of similar lengths pad little. Sums are per token, so order does not matter.
        self.indices = chosen[np.lexsort((chosen, lengths))]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(self.indices[j])
        return self.collator.mask_fixed(self.sentences[i], mask_key(self.seed, VALIDATION_MASKS, i))
