"""Tokenise a split's text files once into memory-mapped token arrays, cached under a key of the files and tokenizer."""
import glob
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from common import UsageError

ENCODE_CHUNK_BYTES = 1 << 22  # lines handed to the encoder at a time (~80k titles): bounded memory
CACHE_FORMAT = 2  # bump when the cached arrays change meaning
log = logging.getLogger("training")


def text_files(path: str, flag: str) -> list[str]:
    """A split given as a directory of .txt shards, a single file or a glob."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.txt")))
    else:
        files = sorted(glob.glob(path)) if glob.has_magic(path) else ([path] if os.path.isfile(path) else [])
    if not files:
        raise UsageError(f"{flag} {path!r} holds no .txt files; pass a split directory written by step 1")
    return files


def file_sha256(path: str) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def files_fingerprint(files: list[str], edge_bytes: int = 1 << 16) -> str:
    """A short hash of a split's file names, sizes and first and last bytes: a resume refuses other data
    at once, without reading a corpus of gigabytes; moving the files elsewhere keeps it."""
    h = hashlib.sha256()
    for path in files:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(edge_bytes)
            f.seek(max(size - edge_bytes, 0))
            h.update(f"{os.path.basename(path)}\0{size}\0".encode() + head + f.read())
    return h.hexdigest()[:16]


def cache_key(files: list[str], tokenizer_file: str) -> str:
    """Key of a split's cache entry: the tokenizer's content and each file's path, size and modification
    time. Stats, not a content hash, so that a warm start does not read a corpus of gigabytes."""
    h = hashlib.sha256(f"format={CACHE_FORMAT}".encode())
    h.update(file_sha256(tokenizer_file).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:24]


class TokenizedSplit:
    """One split as a flat token stream, each sentence followed by </s>, and sentence start offsets.

    Sentence i is `tokens[offsets[i] : offsets[i + 1] - 1]`; the stream itself is what packing cuts.
    Both arrays are memory-mapped from the cache: nothing is held per sentence.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, directory: str | None = None) -> None:
        self.tokens, self.offsets, self.directory = tokens, offsets, directory

    @classmethod
    def load(cls, directory: str) -> "TokenizedSplit":
        with open(os.path.join(directory, "source.json")) as f:
            meta = json.load(f)

        def mapped(name: str, dtype: str, count: int) -> np.ndarray:
            return np.memmap(os.path.join(directory, name), dtype=dtype, mode="r") if count else np.zeros(0, dtype)

        return cls(mapped("tokens.bin", meta["dtype"], meta["tokens"]),
                   mapped("offsets.bin", "int64", meta["sentences"] + 1), directory)

    def __getstate__(self) -> dict:
        # A memory map pickles all its data, and DataLoader workers started by spawn or forkserver (macOS,
        # Python 3.14) get the dataset pickled: a cached split travels as its directory and is mapped again.
        return {"directory": self.directory} if self.directory else self.__dict__

    def __setstate__(self, state: dict) -> None:
        if "tokens" not in state:  # a cached split: map its files again, here in the worker
            state = vars(TokenizedSplit.load(state["directory"]))
        self.__dict__.update(state)

    def __len__(self) -> int:
        return max(len(self.offsets) - 1, 0)

    def sentence(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1] - 1]

    def lengths(self) -> np.ndarray:
        """Tokens per sentence (its </s> included), as uint16, computed in slices of the offsets."""
        out = np.empty(len(self), dtype=np.uint16)
        for start in range(0, len(self), 1 << 22):
            stop = min(start + (1 << 22), len(self))
            out[start:stop] = np.minimum(np.diff(self.offsets[start : stop + 1]), np.iinfo(np.uint16).max)
        return out


def read_line_chunks(files: list[str], chunk_bytes: int):
    """(non-empty lines, bytes read) in chunks of about `chunk_bytes`, file after file."""
    for path in files:
        with open(path, encoding="utf-8") as fh:
            while True:
                try:
                    raw = fh.readlines(chunk_bytes)
                except UnicodeDecodeError:  # step 1 writes clean UTF-8: this file came from elsewhere
                    raise UsageError(f"{path!r} is not UTF-8 text ({first_bad_utf8(path)}); pass the split "
                                     "directories step 1 wrote, or fix the file") from None
                if not raw:
                    break
                yield [line.rstrip("\n") for line in raw if line != "\n"], sum(len(line) for line in raw)


def first_bad_utf8(path: str) -> str:
    """Where a file stops being UTF-8: "line N, byte B" (B counted from 0)."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"line {number}, byte {offset + e.start}"
            offset += len(line)
    return "its bytes changed while reading"


def encode_split(files: list[str], tokenizer_file: str, cache_dir: str, eos_id: int, progress: bool = False,
                 name: str = "split", chunk_bytes: int = ENCODE_CHUNK_BYTES, quiet: bool = False) -> TokenizedSplit:
    """Tokenise the files once into cache_dir/<key>, or reuse that entry.

    Streams: each chunk of lines is encoded by the Rust tokenizer on all cores (while the previous
    chunk's ids are written out) and appended to raw files, so memory stays flat whatever the corpus
    size. Shows a progress bar (a log line at the start and end with `progress` off).
    """
    from tokenizers import Tokenizer

    target = os.path.join(cache_dir, cache_key(files, tokenizer_file))
    if os.path.isfile(os.path.join(target, "source.json")):
        split = TokenizedSplit.load(target)
        if not quiet:
            log.info("%s: token cache reused (%s sentences, %s tokens) from %s", name, f"{len(split):,}",
                     f"{split.tokens.size:,}", target)
        return split
    tokenizer = Tokenizer.from_file(tokenizer_file)
    dtype = np.uint16 if tokenizer.get_vocab_size() <= np.iinfo(np.uint16).max + 1 else np.uint32
    total_bytes = sum(os.path.getsize(f) for f in files)
    os.makedirs(cache_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".encoding-", dir=cache_dir)
    log.info("%s: tokenising %d file(s), %.1f MB, into %s", name, len(files), total_bytes / 1e6, target)
    start, sentences, tokens = time.perf_counter(), 0, 0
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenising {name}", disable=not progress,
               dynamic_ncols=True)
    try:
        with open(os.path.join(staging, "tokens.bin"), "wb") as tok_out, \
                open(os.path.join(staging, "offsets.bin"), "wb") as off_out, ThreadPoolExecutor(1) as pool:
            off_out.write(np.zeros(1, dtype=np.int64).tobytes())

            def write(encodings: list, nbytes: int) -> None:
                nonlocal sentences, tokens
                bar.update(nbytes)
                if not encodings:
                    return
                ids = [e.ids for e in encodings]
                ends = np.cumsum([len(x) for x in ids], dtype=np.int64)
                flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(ends[-1]))
                tok_out.write(np.insert(flat, ends, eos_id).astype(dtype, copy=False).tobytes())  # </s> after each
                off_out.write((tokens + ends + np.arange(1, len(ids) + 1)).tobytes())
                sentences, tokens = sentences + len(ids), tokens + int(ends[-1]) + len(ids)
                bar.set_postfix(lines_per_s=f"{sentences / max(time.perf_counter() - start, 1e-9):,.0f}")

            pending = None  # the chunk being encoded (the tokenizer releases the GIL) while the last one is written
            for lines, nbytes in read_line_chunks(files, chunk_bytes):
                job = pool.submit(tokenizer.encode_batch_fast, lines, add_special_tokens=False), nbytes
                if pending is not None:
                    write(pending[0].result(), pending[1])
                pending = job
            if pending is not None:
                write(pending[0].result(), pending[1])
        with open(os.path.join(staging, "source.json"), "w") as fh:
            json.dump({"files": [os.path.abspath(f) for f in files], "tokenizer": os.path.abspath(tokenizer_file),
                       "sentences": sentences, "tokens": tokens, "dtype": np.dtype(dtype).name}, fh, indent=2)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished the same entry first: use theirs
            if not os.path.isfile(os.path.join(target, "source.json")):
                raise
    finally:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - start
    log.info("%s: %s sentences, %s tokens in %.1f s (%s lines/s)", name, f"{sentences:,}", f"{tokens:,}", seconds,
             f"{sentences / max(seconds, 1e-9):,.0f}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # encoding is done; forked workers must not warn
    return TokenizedSplit.load(target)
