"""Pad sequences into batches and mask them for masked LM, each sequence with its own keyed generator."""
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from training.config import MASK_RULES


def sentence_segments(input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_id: int,
                      padding_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids and RoBERTa position ids of packed blocks: a new sentence starts after each </s>.

    Positions restart with every sentence, as if it stood alone: the block's first sentence has <s> at
    position 0, later ones start at 1 (the slot after <s>). Padding gets segment -1 and the padding
    position. Computed before masking, which may put a random </s> in place of a word.
    """
    batch, length = input_ids.shape
    index = torch.arange(length, device=input_ids.device).expand(batch, length)
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 1:] = input_ids[:, :-1] == eos_id
    segment_ids = starts.long().cumsum(1)
    start_index = torch.where(starts, index, 0).cummax(1).values
    positions = index - start_index + (segment_ids > 0).long()
    real = attention_mask.bool()
    return segment_ids.masked_fill(~real, -1), (positions + padding_idx + 1).masked_fill(~real, padding_idx)


def pad_rows(sequences: list[torch.Tensor] | tuple, value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows padded with `value` to a multiple of 8 (which suits tensor cores), attention mask)."""
    lengths = torch.tensor([len(s) for s in sequences])
    width = -(-int(lengths.max()) // 8) * 8
    rows = torch.full((len(sequences), width), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        rows[row, : len(seq)] = torch.as_tensor(seq)
    return rows, (torch.arange(width)[None, :] < lengths[:, None]).long()


def masked_counts(labels: torch.Tensor) -> dict[str, int]:
    """Labels in the fullest row and in the batch: the sparse last layer's sizes, known before the GPU runs."""
    counts = (labels != -100).sum(1)
    return {"masked_most": int(counts.max()), "masked_total": int(counts.sum())}


def mask_key(*parts: int) -> int:
    """A generator seed mixed from integers (seed, stream, epoch, index...). 32 bits: torch seeds its CPU
    generator from the low 32 bits only, so packing the parts side by side would drop all but the last."""
    return int(np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(1)[0])


TRAIN_MASKS, VALIDATION_MASKS = 1, 2  # mask_key streams: training never reuses a validation mask
# Validation masks 15% by BERT's rule whatever training does, so runs with other masking stay comparable.
VALIDATION_MLM_PROBABILITY = 0.15


class MaskedLMCollator:
    """Pads sequences and masks them by RoBERTa's rule, each sequence with its own keyed generator.

    The rule (BERT's, as `transformers`' DataCollatorForLanguageModeling applies it): `mlm_probability`
    of the non-special tokens are chosen; of those 80% become <mask>, 10% a random token, 10% stay;
    labels are -100 everywhere else. With `mask_rule="all-mask"` every chosen token becomes <mask>
    (Wettig et al. 2023 found it as good as 80/10/10). The library draws one batch from one generator, so its masks
    depend on which sequences share a batch, on the worker and on the generator's history; here each
    sequence's draws come from a generator seeded by its key (seed, epoch, sample index), so a resumed
    run, any number of workers and any number of ranks mask every sample exactly alike, with no random
    state to save. Items are (key, sequence) pairs; plain sequences get keys from `seed` and a call count.
    With `packed`, adds the sentence segments and positions of packed blocks (see `sentence_segments`).
    `masked_most` and `masked_total` (labels in the fullest row, in the batch) let the model size its
    sparse last layer without reading them back from the GPU.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mlm_probability: float, seed: int = 0,
                 packed: bool = False, mask_rule: str = "80-10-10") -> None:
        if mask_rule not in MASK_RULES:
            raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {mask_rule!r}")
        self.mlm_probability, self.seed, self.packed, self.calls = mlm_probability, seed, packed, 0
        self.mask_share = 1.0 if mask_rule == "all-mask" else 0.8
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.eos_id, self.pad_id, self.mask_id = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)

    def mask(self, input_ids: torch.Tensor, lengths: list[int], keys: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input_ids, labels) of padded rows, row r drawn from a generator seeded by keys[r]."""
        draws = torch.ones(4, *input_ids.shape)  # 1 where padding: never chosen
        for row, (length, key) in enumerate(zip(lengths, keys)):
            draws[:, row, :length] = torch.rand(4, length, generator=torch.Generator().manual_seed(key))
        chosen = (draws[0] < self.mlm_probability) & ~torch.isin(input_ids, self.special_ids)
        labels = torch.where(chosen, input_ids, -100)
        to_mask = chosen & (draws[1] < self.mask_share)
        to_random = chosen & ~to_mask & (draws[2] < 0.5)
        random_ids = (draws[3] * self.vocab_size).long().clamp_(max=self.vocab_size - 1)
        masked = torch.where(to_mask, self.mask_id, torch.where(to_random, random_ids, input_ids))
        return masked, labels

    def __call__(self, items: list) -> dict[str, torch.Tensor | int]:
        if isinstance(items[0], tuple):
            keys, sequences = zip(*items)
        else:
            self.calls += 1
            keys, sequences = [mask_key(self.seed, 0, self.calls, r) for r in range(len(items))], items
        input_ids, attention_mask = pad_rows(sequences, self.pad_id)
        masked, labels = self.mask(input_ids, [len(s) for s in sequences], list(keys))
        batch = {"input_ids": masked, "labels": labels, "attention_mask": attention_mask, **masked_counts(labels)}
        if self.packed:  # segments of the unmasked block: masking may put a random </s> where a word was
            batch["segment_ids"], batch["position_ids"] = sentence_segments(
                input_ids, attention_mask, self.eos_id, self.pad_id)
        return batch

    def mask_fixed(self, sequence: torch.Tensor, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels) of one sequence, masked by the same rule with a generator seeded by `key`."""
        ids, labels = self.mask(torch.as_tensor(sequence)[None], [len(sequence)], [key])
        return ids[0], labels[0]


def pad_masked(items: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor | int]:
    """Batch pre-masked (input_ids, labels) pairs, padded to a multiple of 8."""
    ids, labels = zip(*items)
    input_ids, attention_mask = pad_rows(ids, pad_id)
    labels, _ = pad_rows(labels, -100)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, **masked_counts(labels)}
