"""Exact deduplication of a sentence stream in flat memory, keeping each sentence's first occurrence in order.

Sentences and their 64-bit hashes spill to disk as they come. Once the stream ends, the hash space is
cut into ranges small enough to sort in memory: each range's (hash, position) pairs are sorted and the
first position of every hash is marked. The spilled sentences are then read back in order with their
marks. Memory: one byte a sentence for the marks and one range's pairs (a few dozen MB) whatever the
corpus; disk: the sentences once more, and 24 bytes a sentence, in the staging directory.
"""
import os
import shutil
from typing import Iterator

import numpy as np

RANGE_SENTENCES = 1 << 20  # hashes sorted at once: ~40 MB with their positions and the sort's temporaries
READ_BYTES = 1 << 22


class SentenceSpill:
    """Collects sentences and hashes on disk; `first_occurrences` and `replay` give them back deduplicated."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.text = open(os.path.join(directory, "sentences.txt"), "wb")
        self.hashes = open(os.path.join(directory, "hashes.u64"), "wb")
        self.count = 0

    def add(self, sentences: list[str], hashes: np.ndarray) -> None:
        """Append a batch (no sentence holds a newline: normalisation made them spaces)."""
        if sentences:
            self.text.write(("\n".join(sentences) + "\n").encode("utf-8"))
            hashes.astype("<u8", copy=False).tofile(self.hashes)
            self.count += len(sentences)

    def first_occurrences(self) -> np.ndarray:
        """A mask over all sentences added: True where a hash appears for the first time."""
        self.text.close()
        self.hashes.close()
        keep = np.zeros(self.count, dtype=bool)
        ranges = max(1, -(-self.count // RANGE_SENTENCES))
        paths = [os.path.join(self.directory, f"range-{r}.bin") for r in range(ranges)]
        files = [open(p, "wb") for p in paths]
        try:  # one pass cuts the (hash, position) pairs into ranges of the hash space
            for start, hashes in self._hash_chunks():
                which = ((hashes >> np.uint64(32)) * np.uint64(ranges)) >> np.uint64(32)
                order = np.argsort(which, kind="stable")
                pairs = np.empty((len(hashes), 2), dtype="<u8")
                pairs[:, 0], pairs[:, 1] = hashes[order], order + start
                bounds = np.searchsorted(which[order], np.arange(ranges + 1, dtype=np.uint64))
                for r, f in enumerate(files):
                    pairs[bounds[r] : bounds[r + 1]].tofile(f)
        finally:
            for f in files:
                f.close()
        for path in paths:
            pairs = np.fromfile(path, dtype="<u8").reshape(-1, 2)
            os.remove(path)
            if len(pairs):  # positions are ascending within a hash: a stable sort puts the first one first
                order = np.argsort(pairs[:, 0], kind="stable")
                hashes = pairs[order, 0]
                first = np.ones(len(hashes), dtype=bool)
                first[1:] = hashes[1:] != hashes[:-1]
                keep[pairs[order[first], 1]] = True
        return keep

    def replay(self) -> Iterator[tuple[list[bytes], np.ndarray, int]]:
        """(encoded sentences, their hashes, position of the first) in the order they were added, in blocks."""
        position, carry = 0, b""
        with open(os.path.join(self.directory, "sentences.txt"), "rb") as text, \
                open(os.path.join(self.directory, "hashes.u64"), "rb") as hashes:
            while block := text.read(READ_BYTES):
                block = carry + block
                whole = block.rfind(b"\n") + 1
                lines, carry = block[: whole - 1].split(b"\n") if whole else [], block[whole:]
                if lines:
                    yield lines, np.fromfile(hashes, dtype="<u8", count=len(lines)).astype(np.uint64), position
                    position += len(lines)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _hash_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        with open(os.path.join(self.directory, "hashes.u64"), "rb") as f:
            start = 0
            while len(chunk := np.fromfile(f, dtype="<u8", count=RANGE_SENTENCES).astype(np.uint64)):
                yield start, chunk
                start += len(chunk)
