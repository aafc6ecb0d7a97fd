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

    return np.frombuffer(b"".join(map(digest, sentences)), dtype="<u8").astype(np.uint64, copy=False)


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


class RepeatFilter:
    """Passes each raw text once: review dumps repeat a product's title for every review, so most rows
    can be dropped as duplicates before any work is spent normalising them.

    Only a speed-up, so its memory is capped: past `capacity` keys it starts afresh, and a repeat it
    no longer remembers is still caught, after normalisation, by the deduplication (corpus/dedup.py). Keys are Python's
    64-bit string hashes; empty texts always pass, so that they are counted as empty, not as duplicates.
    """

    def __init__(self, capacity: int = 1 << 18) -> None:
        self.seen: set[int] = set()
        self.capacity = capacity
        self.repeats = 0

    def fresh(self, texts: list[str]) -> list[str]:
        """The texts not seen before, in order, then the empty ones (their place does not matter: they are dropped)."""
        if len(self.seen) > self.capacity:
            self.seen.clear()
        batch = dict.fromkeys(texts)  # the batch's own repeats go at C speed (and each str caches its hash)
        batch.pop("", None)
        seen, out = self.seen, []
        for text in batch:
            h = hash(text)
            if h not in seen:
                seen.add(h)
                out.append(text)
        out += [""] * texts.count("")
        self.repeats += len(texts) - len(out)
        return out
