"""Step 1 end to end: read, normalise, deduplicate, split and write the corpus."""
import itertools
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import Pool
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

from corpus.errors import PipelineError, UsageError
from corpus.normalise import normalise_text
from corpus.sources import SourceStats, read_text_batches
from corpus.splitting import Deduplicator, is_validation, sentence_hash
from corpus.writing import ShardWriter, check_output_dir, publish, staging_dir, write_manifest


@dataclass
class CorpusConfig:
    output_dir: str
    data_files: list[str] | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    text_columns: list[str] | None = None
    cache_dir: str | None = None
    validation_size: float = 0.1
    lines_per_shard: int = 10_000
    seed: int = 42
    lowercase: bool = False
    strip_punctuation: bool = False
    min_chars: int = 1
    max_chars: int = 0
    max_rows: int = 0
    streaming: bool = False
    num_proc: int = 1
    overwrite: bool = False
    progress: bool = True


def validate_config(cfg: CorpusConfig) -> None:
    if not cfg.data_files and not cfg.dataset:
        raise UsageError("no input: pass --data-files or --dataset")
    if cfg.data_files and cfg.dataset:
        raise UsageError("pass either --data-files or --dataset, not both")
    if not 0.0 < cfg.validation_size < 1.0:
        raise UsageError(f"--validation-sample-size must be between 0 and 1 (exclusive), got {cfg.validation_size}")
    if cfg.lines_per_shard < 1:
        raise UsageError(f"--lines-per-shard must be at least 1, got {cfg.lines_per_shard}")
    if cfg.min_chars < 1 or (cfg.max_chars and cfg.max_chars < cfg.min_chars):
        raise UsageError("--min-chars must be at least 1 and --max-chars 0 (no limit) or at least --min-chars")
    if cfg.num_proc < 1 or cfg.max_rows < 0:
        raise UsageError("--num-proc must be at least 1 and --max-rows 0 (all) or more")


def normalise_batch(texts: list[str], lowercase: bool, strip_punctuation: bool) -> list[str]:
    return [normalise_text(t, lowercase, strip_punctuation) for t in texts]


def _limit_rows(batches: Iterable[list[str]], stats: SourceStats, max_rows: int) -> Iterator[list[str]]:
    taken = 0
    for batch in batches:
        if max_rows and taken + len(batch) >= max_rows:
            yield batch[: max_rows - taken]
            return
        taken += len(batch)
        yield batch


def generate_corpus(cfg: CorpusConfig) -> dict[str, Any]:
    """Write OUTPUT/train and OUTPUT/validation shards plus manifest.json; return the manifest."""
    validate_config(cfg)
    check_output_dir(cfg.output_dir, cfg.overwrite)
    stats = SourceStats()
    batches = read_text_batches(
        cfg.data_files, cfg.dataset, cfg.dataset_config, cfg.text_columns, stats, cfg.cache_dir, cfg.streaming
    )
    batches = _limit_rows(batches, stats, cfg.max_rows)
    first = next(batches, None)  # surfaces bad input (missing files, wrong column) before any output or bar
    batches = itertools.chain([first] if first is not None else [], batches)
    normalise = partial(normalise_batch, lowercase=cfg.lowercase, strip_punctuation=cfg.strip_punctuation)
    try:
        staging = staging_dir(cfg.output_dir)
    except OSError as e:
        raise UsageError(f"cannot write to --output-dir {cfg.output_dir!r} ({e.strerror}); choose a writable directory") from None
    started = time.time()
    try:
        writers = {s: ShardWriter(os.path.join(staging, s), cfg.lines_per_shard) for s in ("train", "validation")}
        dedup = Deduplicator()
        dropped: Counter[str] = Counter()
        rows_seen = 0
        pool = Pool(cfg.num_proc) if cfg.num_proc > 1 else None
        try:
            normalised = pool.imap(normalise, batches) if pool else map(normalise, batches)
            bar = tqdm(desc="rows", unit=" rows", unit_scale=True, disable=not cfg.progress, mininterval=1.0)
            for sentences in normalised:  # (bar closed below; an error ends the process anyway)
                rows_seen += len(sentences)
                bar.update(len(sentences))
                for s in sentences:
                    if len(s) < cfg.min_chars:
                        dropped["empty" if not s else "too_short"] += 1
                        continue
                    if cfg.max_chars and len(s) > cfg.max_chars:
                        dropped["too_long"] += 1
                        continue
                    h = sentence_hash(s, cfg.seed)
                    if dedup.is_new(h):
                        writers["validation" if is_validation(h, cfg.validation_size) else "train"].write(s)
            bar.close()
        finally:
            if pool:
                pool.terminate()
        shards = {split: w.close() for split, w in writers.items()}
        dropped.update(stats.dropped)
        rows_read = rows_seen + sum(stats.dropped.values())
        kept = sum(sh["lines"] for split in shards.values() for sh in split)
        if not shards["train"]:
            raise PipelineError(
                f"no sentence left after reading {rows_read} rows (dropped: {dict(dropped) or 'none'}); "
                "check --text-column and the length filters"
            )
        if not shards["validation"]:
            raise PipelineError(
                f"only {kept} unique sentences, none fell into validation; use more data or a larger --validation-sample-size"
            )
        manifest = {
            "source": {"data_files": cfg.data_files, "dataset": cfg.dataset, "dataset_config": cfg.dataset_config},
            "arguments": {k: v for k, v in asdict(cfg).items() if k != "progress"},
            "rows_read": rows_read,
            "rows_kept": kept,
            "dropped": dict(sorted(dropped.items())),
            "duplicates_removed": dedup.duplicates,
            "splits": {
                split: {
                    "lines": sum(sh["lines"] for sh in split_shards),
                    "bytes": sum(sh["bytes"] for sh in split_shards),
                    "shards": split_shards,
                }
                for split, split_shards in shards.items()
            },
            "seconds": round(time.time() - started, 3),
        }
        write_manifest(staging, manifest)
        publish(staging, cfg.output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
