"""Deduplicate sentences and assign each to train or validation by a stable hash."""
import hashlib
import math

import numpy as np


def _key(seed: int) -> bytes:
    return seed.to_bytes(8, "little", signed=True)


def sentence_hash(sentence: str, seed: int) -> int:
    """A 64-bit keyed hash of a sentence: the dedup key and the split draw in one."""
    return int.from_bytes(hashlib.blake2b(sentence.encode("utf-8"), digest_size=8, key=_key(seed)).digest(), "little")


def sentence_hashes(sentences: list[str], seed: int) -> np.ndarray:
    """`sentence_hash` of each sentence, as a uint64 array."""
    keyed = hashlib.blake2b(digest_size=8, key=_key(seed))

    def digest(sentence: str) -> bytes:
        h = keyed.copy()  # copying the keyed state skips hashing the key block again
        h.update(sentence.encode("utf-8"))
        return h.digest()

    return np.frombuffer(b"".join(map(digest, sentences)), dtype="<u8").astype(np.uint64)


def is_validation(hash_value: int, validation_size: float) -> bool:
    """A sentence goes to validation when its hash falls in the first `validation_size` of the range.

    Depending on the sentence alone (not on its position or on the other rows) makes the split
    identical across re-runs, file orders and streaming, and an exact duplicate can never sit
    on both sides.
    """
    return hash_value < validation_size * 2**64


def validation_mask(hashes: np.ndarray, validation_size: float) -> np.ndarray:
    """`is_validation` of each hash; h < x for a float x is h < ceil(x) in integers, with no rounding."""
    return hashes < np.uint64(math.ceil(validation_size * 2**64))


class SeenHashes:
    """The set of 64-bit sentence hashes met so far, in 8 bytes a hash (a Python set of ints takes ~70).

    Hashes are kept in sorted numpy runs that a batch probes by binary search. New hashes gather in a
    small run; a full one joins the others, and the two smallest runs merge while they are of a
    similar size and the merged run holds at most half of all hashes: a few runs to probe at any size,
    and a merge never copies more than 4 bytes per hash held (12 bytes a hash at the peak).
    """

    def __init__(self, fresh_run: int = 1 << 16) -> None:
        self.runs: list[np.ndarray] = []
        self.recent = np.empty(0, np.uint64)
        self.fresh_run = fresh_run
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, hashes: np.ndarray) -> np.ndarray:
        """Add a batch; return the mask of the hashes never met before (a repeat within the batch: the first)."""
        unique, first = np.unique(hashes, return_index=True)
        new = np.ones(len(unique), bool)
        for run in (*self.runs, self.recent):
            if len(run) and new.any():
                at = np.minimum(np.searchsorted(run, unique), len(run) - 1)
                new &= run[at] != unique
        mask = np.zeros(len(hashes), bool)
        mask[first[new]] = True
        fresh = unique[new]
        self.count += len(fresh)
        self.recent = np.concatenate((self.recent, fresh))
        self.recent.sort()
        if len(self.recent) >= self.fresh_run:
            self.runs.append(self.recent)
            self.recent = np.empty(0, np.uint64)
            self._merge()
        return mask

    def _merge(self) -> None:
        self.runs.sort(key=len, reverse=True)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]) \
                and len(self.runs[-2]) + len(self.runs[-1]) <= self.count // 2:
            merged = np.concatenate((self.runs.pop(), self.runs.pop()))
            merged.sort()  # in place: the only copy a merge makes is `merged` itself
            self.runs.append(merged)
            self.runs.sort(key=len, reverse=True)


class RepeatFilter:
    """Passes each raw text once: review dumps repeat a product's title for every review, so most rows
    can be dropped as duplicates before any work is spent normalising them.

    Only a speed-up, so its memory is capped: past `capacity` keys it starts afresh, and a repeat it
    no longer remembers is still caught, after normalisation, by SeenHashes. Keys are Python's
    64-bit string hashes; empty texts always pass, so that they are counted as empty, not as duplicates.
    """

    def __init__(self, capacity: int = 1 << 18) -> None:
        self.seen: set[int] = set()
        self.capacity = capacity
        self.repeats = 0

    def fresh(self, texts: list[str]) -> list[str]:
        if len(self.seen) > self.capacity:
            self.seen.clear()
        out = []
        for text in texts:
            if text:
                h = hash(text)
                if h in self.seen:
                    self.repeats += 1
                    continue
                self.seen.add(h)
            out.append(text)
        return out
