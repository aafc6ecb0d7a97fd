"""Fit a RoBERTa-style ByteLevel BPE tokenizer and save it where `AutoTokenizer` finds it."""
import codecs
import glob
import json
import os
from typing import Iterator

from tokenizers import AddedToken, Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing

from common import UsageError

# RoBERTa's ids: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4. <mask> swallows the space before it,
# so "a <mask> b" asks the model for a space-prefixed word, as in pretraining text.
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True)]
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, plus the special tokens
MODEL_MAX_LENGTH = 512
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
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    return total


def sample_lines(files: list[str], max_lines: int) -> Iterator[str]:
    """Every k-th line, so that at most `max_lines` spread evenly over the whole corpus are used."""
    stride = max(1, -(-count_lines(files) // max_lines))
    i = 0
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if i % stride == 0:
                    yield line.rstrip("\n")
                i += 1


def fit_tokenizer(
    files: list[str], vocab_size: int = 30_000, min_frequency: int = 2, lowercase: bool = False,
    max_lines: int = 0, show_progress: bool = True,
) -> Tokenizer:
    """Train ByteLevel BPE on the files (or an even sample of `max_lines` of them)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UsageError(f"--vocab-size must be at least {MIN_VOCAB_SIZE} (256 bytes + special tokens), got {vocab_size}")
    if min_frequency < 1:
        raise UsageError(f"--min-frequency must be at least 1, got {min_frequency}")
    bpe = ByteLevelBPETokenizer(lowercase=lowercase)
    options = dict(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                   show_progress=show_progress)
    if max_lines:
        bpe.train_from_iterator(sample_lines(files, max_lines), **options)
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
