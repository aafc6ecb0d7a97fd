"""Measure a fitted tokenizer on held-out text: vocabulary, fertility, long lines, round trip."""
import itertools
from typing import Any

from tokenizers import Tokenizer


def tokenizer_report(tokenizer: Tokenizer, lines: list[str], long_line_tokens: int = 128,
                     round_trip_sample: int = 1000) -> dict[str, Any]:
    """Statistics of `tokenizer` on `lines` (validation text: never the lines it was fitted on)."""
    encodings = tokenizer.encode_batch_fast(lines, add_special_tokens=False)  # no offsets: several times faster
    n_tokens = [len(e.ids) for e in encodings]
    total_tokens = sum(n_tokens)
    total_bytes = sum(len(line.encode("utf-8")) for line in lines)
    normalizer = tokenizer.normalizer  # a lowercasing tokenizer round-trips to the lowercased text
    sample = list(itertools.islice(zip(lines, encodings), round_trip_sample))
    failures = [x for x, e in sample if tokenizer.decode(e.ids) != (normalizer.normalize_str(x) if normalizer else x)]
    return {
        "vocab_size": tokenizer.get_vocab_size(),
        "validation_lines": len(lines),
        "mean_tokens_per_line": round(total_tokens / max(1, len(lines)), 3),
        "bytes_per_token": round(total_bytes / max(1, total_tokens), 3),
        f"share_longer_than_{long_line_tokens}_tokens": round(
            sum(n > long_line_tokens - 2 for n in n_tokens) / max(1, len(lines)), 5),
        "round_trip_checked": len(sample),
        "round_trip_ok": len(sample) - len(failures),
        "round_trip_failures": failures[:5],
    }
