"""Tokenise the corpus once into cached arrays, and serve masked-LM batches with Lightning."""
import glob
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

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


def sentence_segments(input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_id: int,
                      padding_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids and RoBERTa position ids of packed blocks: a new sentence starts after each </s>.

    Positions restart with every sentence, as if it stood alone: the block's first sentence has <s> at
    position 0, later ones start at 1 (the slot after <s>). Padding gets segment -1 and the padding
    position. Computed before masking, which may put a random </s> in place of a word.
    """
    batch, length = input_ids.shape
    index = torch.arange(length).expand(batch, length)
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
MASK_RULES = ("80-10-10", "all-mask")


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


def pad_masked(items: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor | int]:
    """Batch pre-masked (input_ids, labels) pairs, padded to a multiple of 8."""
    ids, labels = zip(*items)
    input_ids, attention_mask = pad_rows(ids, pad_id)
    labels, _ = pad_rows(labels, -100)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, **masked_counts(labels)}


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start: a stop signal sent to the whole process group (srun, kill -- -PGID) must not
    kill the workers mid-step; the training process saves and stops, and its workers with it."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def group_by_length(order: np.ndarray, lengths: np.ndarray, batch: int, rng: np.random.Generator,
                    pool: int = 50) -> np.ndarray:
    """Sort each run of `pool` batches by length, then shuffle whole batches (as Hugging Face's
    LengthGroupedSampler): batches of similar lengths, in random order. A last partial batch stays last
    so that every other one keeps its boundaries. Sorts `order` in place, a slice of runs at a time,
    so that the only copy it makes is the shuffled result (20M sentences: 80 MB, temporaries ~25 MB)."""
    run = batch * pool
    in_runs = len(order) // run * run

    def longest_first(ids: np.ndarray) -> np.ndarray:  # an ascending sort key, two bytes a sentence
        return np.iinfo(np.uint16).max - lengths[ids].astype(np.uint16)

    step = max(1, (1 << 20) // run) * run
    for start in range(0, in_runs, step):  # stable sorts: equal lengths keep their shuffled order
        runs = order[start : min(start + step, in_runs)].reshape(-1, run)
        runs[:] = np.take_along_axis(runs, np.argsort(longest_first(runs), axis=1, kind="stable"), axis=1)
    tail = order[in_runs:]
    tail[:] = tail[np.argsort(longest_first(tail), kind="stable")]
    full = len(order) // batch
    grouped = np.empty_like(order)
    np.take(order[: full * batch].reshape(full, batch), rng.permutation(full), axis=0,
            out=grouped[: full * batch].reshape(full, batch))
    grouped[full * batch :] = order[full * batch :]
    return grouped


class TrainingStream(Sampler[tuple[int, int]]):
    """The training samples as one endless stream of (epoch, index): epoch after epoch, each shuffled
    with (seed, epoch), so that position p of the stream depends only on the seed and the data.

    Rank r of `world_size` takes positions start + r, start + r + world_size, ...: a step of
    `world_size` batches of B takes exactly the next B x world_size positions, whatever B and the
    number of ranks, so a run resumed at `start` (the samples already consumed) on other hardware or
    with another batch size goes on with the very samples the first run would have taken, none
    skipped or repeated. No epoch ever ends for Lightning, so no rank pads its share and no step is
    cut short at an epoch's end. With `lengths`, each run of `group` positions (the global batch the
    job started with, kept across resumes) holds sentences of similar length (see group_by_length).
    Each epoch's order is a numpy array of 32-bit indices: 20M sentences cost 80 MB.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 lengths: np.ndarray | None = None, group: int = 1) -> None:
        self.n, self.seed, self.rank, self.world_size, self.start = n, seed, rank, world_size, start
        self.lengths, self.group = lengths, group

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        order = np.arange(self.n, dtype=np.int32 if self.n < 2**31 else np.int64)
        rng.shuffle(order)
        if self.lengths is not None:
            order = group_by_length(order, self.lengths, self.group, rng)
        return order

    def __iter__(self):
        position, epoch, order = self.start + self.rank, -1, None
        while True:
            e, k = divmod(position, self.n)
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            yield epoch, int(order[k])
            position += self.world_size


class MaskedLMDataModule(pl.LightningDataModule):
    """Train and validation splits, tokenised once and cached, served as masked-LM batches."""

    def __init__(
        self, train_path: str, val_path: str, tokenizer: PreTrainedTokenizerBase, tokenizer_file: str,
        cache_dir: str, max_seq_length: int = 128, batch_size: int = 32, mlm_probability: float = 0.15,
        packing: bool = True, num_workers: int = 0, seed: int = 42, attend_across_sentences: bool = False,
        pin_memory: bool = False, max_val_sentences: int = 10_000, progress: bool = False, mask_rule: str = "80-10-10",
    ) -> None:
        super().__init__()
        self.train_files = text_files(train_path, "--path-to-train-set")
        self.val_files = text_files(val_path, "--path-to-val-set")
        if {os.path.realpath(f) for f in self.train_files} & {os.path.realpath(f) for f in self.val_files}:
            raise UsageError("--path-to-train-set and --path-to-val-set share files; pass step 1's train and validation directories")
        self.tokenizer, self.tokenizer_file, self.cache_dir = tokenizer, tokenizer_file, cache_dir
        self.max_seq_length, self.batch_size, self.mlm_probability = max_seq_length, batch_size, mlm_probability
        self.packing, self.num_workers, self.seed, self.pin_memory = packing, num_workers, seed, pin_memory
        self.max_val_sentences, self.progress, self.mask_rule = max_val_sentences, progress, mask_rule
        self.attend_across_sentences = attend_across_sentences
        self.resume_state: dict[str, int] = {}  # restored from a checkpoint (see state_dict)
        self.prepare_data_per_node = False  # global rank 0 tokenises: the job directory is shared by all nodes
        self.group = batch_size

    def prepare_data(self) -> None:
        if getattr(self, "train_set", None) is not None:  # the final validate calls this again
            return
        for name, files in (("train", self.train_files), ("validation", self.val_files)):
            encode_split(files, self.tokenizer_file, self.cache_dir, self.tokenizer.eos_token_id, self.progress, name)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:  # fit, then the final validate: set up once
            return
        eos, bos = self.tokenizer.eos_token_id, self.tokenizer.bos_token_id
        # prepare_data built or found these (and said so); here they are only opened
        train = encode_split(self.train_files, self.tokenizer_file, self.cache_dir, eos, name="train", quiet=True)
        val = encode_split(self.val_files, self.tokenizer_file, self.cache_dir, eos, name="validation", quiet=True)
        if len(train) == 0 or len(val) == 0:
            raise UsageError("the training or validation split is empty; run step 1 on more data")
        self.train_tokens, self.train_split = int(train.tokens.size), train
        self.train_set = (
            PackedBlocks(train, self.max_seq_length, bos) if self.packing
            else Sentences(train, self.max_seq_length, bos, eos)
        )
        val_collator = MaskedLMCollator(self.tokenizer, VALIDATION_MLM_PROBABILITY)
        self.val_set = FixedMaskedSample(val, self.max_seq_length, bos, eos, val_collator, self.seed,
                                         self.max_val_sentences)
        self.val_sentences = len(val)
        log.info("validation: %s of %s sentences, fixed masks (seed %d)", f"{len(self.val_set):,}", f"{len(val):,}",
                 self.seed)
        self.train_collator = MaskedLMCollator(self.tokenizer, self.mlm_probability, mask_rule=self.mask_rule,
                                               packed=self.packing and not self.attend_across_sentences)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        saved = self.resume_state
        self.group = saved.get("group", self.batch_size * world)  # the stream's layout stays the job's first
        start = saved.get("samples", 0)
        if "batches" in saved:  # written before the stream (2026): batches per rank in an epoch of the same order
            start = saved.get("epoch", 0) * len(self.train_set) + min(saved["batches"] * self.group, len(self.train_set))
        self.trainer.lightning_module.samples_consumed = start
        if saved and rank == 0:
            epoch, k = divmod(start, len(self.train_set))
            log.warning("resuming the training data at sample %s (epoch %d, %s of %s), saved by %s x %s "
                        "sequences x %s accumulated, now %d x %d x %d", f"{start:,}", epoch, f"{k:,}",
                        f"{len(self.train_set):,}", saved.get("world", "?"), saved.get("batch", "?"),
                        saved.get("accumulate", "?"), world, self.batch_size, self.trainer.accumulate_grad_batches)
        lengths = None if self.packing else self.train_set.split.lengths()  # for grouping by length
        sampler = TrainingStream(len(self.train_set), self.seed, rank, world, start, lengths, self.group)
        self.train_loader = DataLoader(
            KeyedSamples(self.train_set, self.seed), batch_size=self.batch_size, sampler=sampler,
            collate_fn=self.train_collator, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory, worker_init_fn=ignore_stop_signals,
        )
        return self.train_loader

    def shutdown_workers(self) -> None:
        """End the training loader's workers. They ignore SIGTERM (see ignore_stop_signals), which is how
        Python's exit ends them, and Lightning leaves them running when a run stops during a validation."""
        iterator = getattr(getattr(self, "train_loader", None), "_iterator", None)  # torch's, with persistent workers
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank()  # each rank scores a disjoint part; the module sums over ranks
        return DataLoader(
            # 4x the training batch: no gradients to hold, and larger products ran 1.3x faster on a CPU.
            self.val_set, batch_size=4 * self.batch_size, sampler=range(rank, len(self.val_set), world),
            collate_fn=partial(pad_masked, pad_id=self.tokenizer.pad_token_id), num_workers=0,
        )

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the data (samples consumed, over all ranks) and the layout it was
        consumed in: saved in every checkpoint, so a resume continues there, on any hardware."""
        trainer = self.trainer
        return {"samples": trainer.lightning_module.samples_consumed, "group": self.group,
                "world": trainer.world_size, "batch": self.batch_size, "accumulate": trainer.accumulate_grad_batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.resume_state = state_dict
