"""Exact deduplication of a sentence stream in flat memory, keeping each sentence's first occurrence in order.

Sentences and their 64-bit hashes spill to disk as they come. Once the stream ends, the hash space is
cut into ranges small enough to sort in memory: each range's (hash, position) pairs are sorted and the
first position of every hash is marked; a pass over the hashes cuts the pairs of up to OPEN_RANGES ranges,
a file each, so that any corpus keeps few files open. The spilled sentences are then read back in order with
their marks. Memory: one byte a spilled sentence for the marks, and one range's pairs and a window of recent
hashes (a few dozen MB) whatever the corpus; disk: the spilled sentences once more, and 24 bytes each, in
the staging directory. Copies of a sentence close together (a title over its reviews) are dropped before
the spill, so that it holds about the distinct sentences.
"""
import os
import resource
import shutil
from typing import Iterator

import numpy as np

from corpus.sources import whole_lines

RANGE_SENTENCES = 1 << 20  # hashes sorted at once: ~40 MB with their positions and the sort's temporaries
OPEN_RANGES = 128  # range files written in one pass over the hashes: under the usual `ulimit -n` (256 on macOS)
READ_BYTES = 1 << 22


def open_ranges() -> int:
    """Range files to write at once: OPEN_RANGES, or a quarter of a lower limit on open files (the rest is others')."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return OPEN_RANGES if soft == resource.RLIM_INFINITY else max(1, min(OPEN_RANGES, soft // 4))


class SentenceSpill:
    """Collects sentences and hashes on disk; `first_occurrences` and `replay` give them back deduplicated."""

    def __init__(self, directory: str, recent: int = 1 << 20) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.text = open(os.path.join(directory, "sentences.txt"), "wb")
        self.hashes = open(os.path.join(directory, "hashes.u64"), "wb")
        self.count = 0  # sentences spilled
        self.repeats = 0  # later copies dropped before spilling
        self.recent, self.recent_size = np.empty(0, np.uint64), recent

    def add(self, sentences: list[str], hashes: np.ndarray) -> None:
        """Append a batch (no sentence holds a newline: normalisation made them spaces).

        A copy of a sentence met in this batch or among the last `recent` hashes is dropped here (only
        later copies, so first occurrences are unchanged): disk and the mask then grow with distinct
        sentences rather than rows; a copy from longer ago is left to the sort.
        """
        unique, first = np.unique(hashes, return_index=True)
        if len(self.recent) and len(unique):
            at = np.minimum(np.searchsorted(self.recent, unique), len(self.recent) - 1)
            fresh = self.recent[at] != unique
            unique, first = unique[fresh], first[fresh]
        self.repeats += len(hashes) - len(first)
        if len(self.recent) + len(unique) > self.recent_size:
            self.recent = unique
        else:  # disjoint sorted arrays: one copy, sorted in place
            self.recent = np.concatenate((self.recent, unique))
            self.recent.sort()
        if len(first):
            first.sort()
            self.text.write(("\n".join([sentences[i] for i in first.tolist()]) + "\n").encode("utf-8"))
            hashes[first].astype("<u8", copy=False).tofile(self.hashes)
            self.count += len(first)

    def first_occurrences(self) -> np.ndarray:
        """A mask over all sentences added: True where a hash appears for the first time."""
        self.text.close()
        self.hashes.close()
        keep = np.zeros(self.count, dtype=bool)
        ranges = max(1, -(-self.count // RANGE_SENTENCES))
        step = open_ranges()
        for first in range(0, ranges, step):
            for path in self._cut(ranges, range(first, min(first + step, ranges))):
                pairs = np.fromfile(path, dtype="<u8").reshape(-1, 2)
                os.remove(path)
                if len(pairs):  # positions are ascending within a hash: a stable sort puts the first one first
                    order = np.argsort(pairs[:, 0], kind="stable")
                    hashes = pairs[order, 0]
                    first_copy = np.ones(len(hashes), dtype=bool)
                    first_copy[1:] = hashes[1:] != hashes[:-1]
                    keep[pairs[order[first_copy], 1]] = True
        return keep

    def _cut(self, ranges: int, group: range) -> list[str]:
        """One pass over the hashes: the (hash, position) pairs of each range of `group` to a file of its own."""
        paths = [os.path.join(self.directory, f"range-{r}.bin") for r in group]
        files = []
        try:
            for path in paths:
                files.append(open(path, "wb"))
            for start, hashes in self._hash_chunks():
                which = ((hashes >> np.uint64(32)) * np.uint64(ranges)) >> np.uint64(32)
                inside = np.flatnonzero((which >= group.start) & (which < group.stop))
                inside = inside[np.argsort(which[inside], kind="stable")]
                bounds = np.searchsorted(which[inside], np.arange(group.start, group.stop + 1, dtype=np.uint64))
                pairs = np.empty((len(inside), 2), dtype="<u8")
                pairs[:, 0], pairs[:, 1] = hashes[inside], inside + start
                for r, f in enumerate(files):
                    pairs[bounds[r] : bounds[r + 1]].tofile(f)
        finally:
            for f in files:
                f.close()
        return paths

    def replay(self) -> Iterator[tuple[list[bytes], np.ndarray, int]]:
        """(encoded sentences, their hashes, position of the first) in the order they were added, in blocks."""
        position, carry = 0, b""
        with open(os.path.join(self.directory, "sentences.txt"), "rb") as text, \
                open(os.path.join(self.directory, "hashes.u64"), "rb") as hashes:
            while block := text.read(READ_BYTES):  # the file ends with a newline: nothing is left in carry
                data, carry = whole_lines(carry, block)
                if data:
                    lines = data[:-1].split(b"\n")
                    yield lines, np.fromfile(hashes, dtype="<u8", count=len(lines)).astype(np.uint64, copy=False), \
                        position
                    position += len(lines)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _hash_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        with open(os.path.join(self.directory, "hashes.u64"), "rb") as f:
            start = 0
            while len(chunk := np.fromfile(f, dtype="<u8", count=RANGE_SENTENCES).astype(np.uint64, copy=False)):
                yield start, chunk
                start += len(chunk)
