"""Fit a RoBERTa-style ByteLevel BPE tokenizer and save it where `AutoTokenizer` finds it."""
import codecs
import glob
import json
import os
import random
from dataclasses import dataclass
from typing import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing

from common import UsageError
from tokenizer.memory import MiB, format_bytes

# RoBERTa's ids: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4. <mask> swallows the space before it,
# so "a <mask> b" asks the model for a space-prefixed word, as in pretraining text.
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True)]
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, plus the special tokens
MODEL_MAX_LENGTH = 512
# The BPE trainer holds every distinct word of its input with its pairs, so its peak RSS grows with the text.
# Measured (bench/tokenizer_memory.py's way, vocabulary 30,000), RSS growth per byte of text between two sizes:
# 0.3 on generated review text (20-54 MB), 0.85 on title-like text with model numbers (bench/scale.py), 1.9 on
# Python source (20-60 MB), whose first 20 MB took 108 MiB over the bare process (21 MiB). Distinct words grow
# more slowly than the text, so 6 per byte over a 128 MiB overhead covers all of those with room; text of
# nearly all-distinct words (ids, hashes) needs about 40 per byte and is not covered.
FIT_OVERHEAD = 128 * MiB
MEMORY_PER_TEXT_BYTE = 6
MIN_FIT_LINES = 1_000
SPECIAL_ROLES = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                 "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"}


def corpus_files(corpus: str) -> list[str]:
    """The .txt files of a corpus directory (or a single file), checked to be UTF-8 text."""
    if os.path.isfile(corpus):
        files = [corpus]
    elif os.path.isdir(corpus):
        files = sorted(glob.glob(os.path.join(corpus, "*.txt")))
        if not files:
            raise UsageError(f"no .txt files in {corpus!r}; point --corpus-dir at OUTPUT/train of step 1")
    else:
        raise UsageError(f"corpus {corpus!r} does not exist; run step 1 first or fix --corpus-dir")
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(1 << 16)
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut last character is fine
            is_text = b"\x00" not in head
        except UnicodeDecodeError:
            is_text = False
        if not is_text:
            raise UsageError(f"{f!r} is not UTF-8 text; --corpus-dir must hold step 1's .txt shards")
    if not any(os.path.getsize(f) for f in files):
        raise UsageError(f"the corpus in {corpus!r} is empty; run step 1 on data with text")
    return files


def count_lines(files: list[str]) -> int:
    """Lines as reading the files in binary yields them: a last line without a newline counts too."""
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            last = b"\n"
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                total, last = total + chunk.count(b"\n"), chunk
            total += not last.endswith(b"\n")
    return total


def estimate_fit_memory(text_bytes: float) -> int:
    """A conservative peak RSS of step 2 fitting on `text_bytes` of text."""
    return int(FIT_OVERHEAD + MEMORY_PER_TEXT_BYTE * text_bytes)


@dataclass
class FitPlan:
    corpus_lines: int
    corpus_bytes: int
    lines: int  # how many lines to fit on
    estimate: int  # estimated peak RSS of a fit on the whole corpus
    reason: str | None  # why only a sample is used; None when every line is

    @property
    def sampled(self) -> bool:
        return self.lines < self.corpus_lines


def plan_fit(files: list[str], memory_budget: int, max_lines: int = 0) -> FitPlan:
    """All lines, or as many as `memory_budget` and `max_lines` (0 = no cap) allow."""
    if max_lines < 0:
        raise UsageError(f"--max-lines must be 0 (no cap) or a number of lines, got {max_lines}")
    corpus_lines, corpus_bytes = count_lines(files), sum(os.path.getsize(f) for f in files)
    line_bytes = corpus_bytes / corpus_lines
    within_budget = int((memory_budget - FIT_OVERHEAD) / MEMORY_PER_TEXT_BYTE / line_bytes)
    least = min(corpus_lines, MIN_FIT_LINES)
    if within_budget < least:
        need = f"{-(-estimate_fit_memory(least * line_bytes) // MiB):,}MiB"  # rounded up, in a form the flag takes
        raise UsageError(f"--memory-budget {format_bytes(memory_budget)} is too small to fit a tokenizer on {least:,} "
                         f"lines of this corpus; raise it to at least {need}")
    plan = FitPlan(corpus_lines, corpus_bytes, corpus_lines, estimate_fit_memory(corpus_bytes), None)
    if within_budget < plan.lines:
        plan.lines = within_budget
        plan.reason = (f"the full corpus would need ~{format_bytes(plan.estimate)}, over --memory-budget "
                       f"{format_bytes(memory_budget)}")
    if 0 < max_lines < plan.lines:
        plan.lines, plan.reason = max_lines, f"capped by --max-lines {max_lines:,}"
    return plan


class LineSample:
    """A seeded uniform random sample of `size` of the corpus's `total` lines, in corpus order; counts its yield."""

    def __init__(self, files: list[str], size: int, total: int, seed: int = 42) -> None:
        self.files, self.size, self.total, self.seed = files, size, total, seed
        self.lines = self.bytes = 0

    def __iter__(self) -> Iterator[str]:
        # Selection sampling (Knuth's algorithm S): keep a line with probability (still wanted) / (still to come).
        # Exactly `size` lines, every subset equally likely, in one pass, and no aliasing with a period in the
        # corpus (alternating titles and bodies), which taking every k-th line has.
        rng = random.Random(self.seed)
        wanted, left = self.size, self.total
        self.lines = self.bytes = 0
        for f in self.files:
            with open(f, "rb") as fh:
                for line in fh:
                    if rng.random() * left < wanted:
                        wanted, self.lines, self.bytes = wanted - 1, self.lines + 1, self.bytes + len(line)
                        yield line.rstrip(b"\n").decode("utf-8", errors="replace")
                        if not wanted:
                            return
                    left -= 1


def check_settings(vocab_size: int, min_frequency: int) -> None:
    """Refuse a vocabulary smaller than the bytes plus special tokens, or a minimum count below 1."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UsageError(f"--vocab-size must be at least {MIN_VOCAB_SIZE} (256 bytes + special tokens), got {vocab_size}")
    if min_frequency < 1:
        raise UsageError(f"--min-frequency must be at least 1, got {min_frequency}")


def fit_tokenizer(
    files: list[str], vocab_size: int = 30_000, min_frequency: int = 2, lowercase: bool = False,
    lines: Iterable[str] | None = None, show_progress: bool = True,
) -> Tokenizer:
    """Train ByteLevel BPE on the files, or on `lines` (a sample of them) when given."""
    check_settings(vocab_size, min_frequency)
    bpe = ByteLevelBPETokenizer(lowercase=lowercase)
    options = dict(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                   show_progress=show_progress)
    if lines is not None:
        bpe.train_from_iterator(lines, **options)
    else:
        bpe.train(files, **options)
    tokenizer = bpe._tokenizer  # the plain `tokenizers.Tokenizer` inside the convenience wrapper
    tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, output_dir: str) -> None:
    """Save tokenizer.json plus the config that makes AutoTokenizer set bos/eos/pad/mask tokens.

    Written directly rather than through transformers' save_pretrained, whose import alone took a fifth
    of step 2 on a 20 MB corpus; a test checks that AutoTokenizer loads it exactly as it loads the
    files transformers writes.
    """
    os.makedirs(output_dir, exist_ok=True)
    tokenizer.save(os.path.join(output_dir, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": MODEL_MAX_LENGTH, **SPECIAL_ROLES}
    with open(os.path.join(output_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
