"""Deduplicate sentences and assign each to train or validation by a stable hash."""
import hashlib


def sentence_hash(sentence: str, seed: int) -> int:
    """A 64-bit keyed hash of a sentence: the dedup key and the split draw in one."""
    key = seed.to_bytes(8, "little", signed=True)
    return int.from_bytes(hashlib.blake2b(sentence.encode("utf-8"), digest_size=8, key=key).digest(), "little")


def is_validation(hash_value: int, validation_size: float) -> bool:
    """A sentence goes to validation when its hash falls in the first `validation_size` of the range.

    Depending on the sentence alone (not on its position or on the other rows) makes the split
    identical across re-runs, file orders and streaming, and an exact duplicate can never sit
    on both sides.
    """
    return hash_value < validation_size * 2**64


class Deduplicator:
    """Remembers 64-bit hashes, not strings, so memory grows by a few dozen bytes per unique sentence."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.duplicates = 0

    def is_new(self, hash_value: int) -> bool:
        if hash_value in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(hash_value)
        return True


class RepeatFilter:
    """Passes each raw text once: review dumps repeat a product's title for every review, so most rows
    can be dropped as duplicates before any work is spent normalising them.

    Only a speed-up, so its memory is capped: past `capacity` keys it starts afresh, and a repeat it
    no longer remembers is still caught, after normalisation, by the Deduplicator. Keys are Python's
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
