"""Step 1 end to end: read, normalise, deduplicate, split and write the corpus."""
import itertools
import os
import pickle
import shlex
import shutil
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import Pool
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from common import PipelineError, UsageError, publish
from corpus.normalise import normalise_text
from corpus.remote import describe_remote, is_remote, redact
from corpus.sources import (SourceStats, expand_data_files, file_kind, read_text_batches,
                            script_dataset_files)
from corpus.dedup import SentenceSpill
from corpus.splitting import RepeatFilter, sentence_hashes, validation_mask
from corpus.writing import ShardWriter, check_output_dir, staging_dir, write_manifest


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
    line_per: str = "row"
    overwrite: bool = False
    progress: bool = True


LINE_PER = ("row", "value")
BAD_LINE_REASONS = ("bad_json", "not_an_object", "bad_type", "bad_utf8", "malformed_row")


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
    if cfg.line_per not in LINE_PER:
        raise UsageError(f"--line-per must be one of {', '.join(LINE_PER)}, got {cfg.line_per!r}")


Prepared = tuple[int, list[str], np.ndarray, dict[str, int]]  # rows, sentences, their hashes, dropped by reason


def prepare_batch(batch: tuple[int, list[str]], cfg: CorpusConfig) -> Prepared:
    """All the per-sentence work on one batch of fresh texts: normalise, filter by length, hash.

    The row count travels with the batch through the pool; what is left for the parent is one
    write to the spill per batch (see corpus/dedup.py).
    """
    rows, texts = batch
    kept, dropped = [], {"empty": 0, "too_short": 0, "too_long": 0}
    for text in texts:
        s = normalise_text(text, cfg.lowercase, cfg.strip_punctuation)
        if len(s) < cfg.min_chars:
            dropped["empty" if not s else "too_short"] += 1
        elif cfg.max_chars and len(s) > cfg.max_chars:
            dropped["too_long"] += 1
        else:
            kept.append(s)
    return rows, kept, sentence_hashes(kept, cfg.seed), {k: n for k, n in dropped.items() if n}


def prepare_file(job: tuple[str, str], cfg: CorpusConfig) -> tuple[SourceStats, int]:
    """One whole file in a worker process, its prepared batches pickled one by one to a spill file that the
    parent reads back as it goes, so that no file's text is ever held whole. Returns (its stats, repeats)."""
    path, spill = job
    stats, repeats = SourceStats(), RepeatFilter()
    with open(spill, "wb") as out:
        for batch in read_text_batches([path], None, None, cfg.text_columns, stats, line_per=cfg.line_per):
            pickle.dump(prepare_batch((len(batch), repeats.fresh(batch)), cfg), out, pickle.HIGHEST_PROTOCOL)
    return stats, repeats.repeats


def _read_spills(results: Iterable[tuple[SourceStats, int]], spills: list[str],
                 stats: SourceStats) -> Iterator[Prepared]:
    """The batches of each file's spill, in file order, folding the workers' counts into the statistics."""
    for (file_stats, repeats), spill in zip(results, spills):
        stats.merge(file_stats)
        stats.repeats_in_workers += repeats
        with open(spill, "rb") as f:
            while True:
                try:
                    yield pickle.load(f)
                except EOFError:
                    break
        os.remove(spill)


def _imap_ahead(pool: Pool, func: Any, items: Iterable, ahead: int) -> Iterator:
    """`pool.imap(func, items)` with at most `ahead` items in flight: Pool.imap reads its whole input into
    its task queue as fast as it can, which on a large file is the whole file in memory."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(func, (item,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _limit_rows(batches: Iterator[list[str]], max_rows: int) -> Iterator[list[str]]:
    taken = 0
    for batch in batches:
        if max_rows and taken + len(batch) >= max_rows:
            yield batch[: max_rows - taken]
            batches.close()  # stops the reader's threads, and what they count, at the blocks taken
            return
        taken += len(batch)
        yield batch


def generate_corpus(cfg: CorpusConfig) -> dict[str, Any]:
    """Write OUTPUT/train and OUTPUT/validation shards plus manifest.json; return the manifest."""
    validate_config(cfg)
    check_output_dir(cfg.output_dir, cfg.overwrite)
    if cfg.dataset and (files := script_dataset_files(cfg.dataset, cfg.dataset_config)):
        columns = ",".join(cfg.text_columns) if cfg.text_columns else files[1]
        raise UsageError(
            f"hub dataset {cfg.dataset!r} is a loading script, which `datasets` no longer runs (since 4.0); its files "
            f"are read directly: python corpus/run_corpus_generation.py --data-files '{files[0]}' --text-column "
            f"{columns} --output-dir {shlex.quote(cfg.output_dir)}")
    stats = SourceStats()
    files = expand_data_files(cfg.data_files) if cfg.data_files else []  # once: a path is never globbed again
    batches = read_text_batches(
        files, cfg.dataset, cfg.dataset_config, cfg.text_columns, stats, cfg.cache_dir, cfg.streaming, cfg.line_per
    )
    batches = _limit_rows(batches, cfg.max_rows)
    first = next(batches, None)  # surfaces bad input (missing files, wrong column) before any output or bar
    batches = itertools.chain([first] if first is not None else [], batches)
    if first is not None and (cfg.progress or stats.note):  # --no-progress: quiet unless there is a warning
        where = f"{len(files)} file(s)" if files else f"hub dataset {cfg.dataset!r}"
        print(f"reading column {', '.join(stats.columns or cfg.text_columns or ['?'])} of {where}"
              + (f" ({stats.note})" if stats.note else ""), file=sys.stderr)
    # Several TSV or JSON Lines files and several processes: each worker reads and normalises whole files, in
    # file order. (Not other formats: each worker's RepeatFilter sees one file, which changes no line written
    # but would change the manifest's counts, where one filter used to see every file.)
    per_file = (cfg.num_proc > 1 and len(files) > 1 and not cfg.max_rows
                and all(file_kind(f) in ("tsv", "jsonl") for f in files))
    if per_file:
        stats = SourceStats(columns=stats.columns)  # the peek is discarded: the workers read every file themselves
    try:
        staging = staging_dir(cfg.output_dir)
    except OSError as e:
        raise UsageError(f"cannot write to --output-dir {cfg.output_dir!r} ({e.strerror}); choose a writable directory") from None
    started = time.time()
    try:
        writers = {s: ShardWriter(os.path.join(staging, s), cfg.lines_per_shard) for s in ("train", "validation")}
        spill, repeats = SentenceSpill(os.path.join(staging, ".dedup")), RepeatFilter()
        dropped: Counter[str] = Counter()
        rows_seen = 0
        bar = tqdm(desc="rows", unit=" rows", unit_scale=True, disable=not cfg.progress, mininterval=1.0)
        pool = Pool(cfg.num_proc) if cfg.num_proc > 1 else None
        try:
            if per_file:
                spills = [os.path.join(staging, f".spill-{i}.pickle") for i in range(len(files))]
                work = partial(prepare_file, cfg=cfg)
                prepared: Iterator[Prepared] = _read_spills(pool.imap(work, zip(files, spills)), spills, stats)
            else:
                fresh = ((len(batch), repeats.fresh(batch)) for batch in batches)
                work = partial(prepare_batch, cfg=cfg)
                prepared = _imap_ahead(pool, work, fresh, 2 * cfg.num_proc) if pool else map(work, fresh)
            for rows, sentences, hashes, batch_dropped in prepared:
                rows_seen += rows
                bar.update(rows)
                dropped.update(batch_dropped)
                spill.add(sentences, hashes)
            bar.close()
        finally:
            if pool:
                pool.terminate()
        keep = spill.first_occurrences()
        for lines, hashes, position in spill.replay():  # in the order read: the first occurrence of each sentence
            new = keep[position : position + len(lines)]
            validation = validation_mask(hashes, cfg.validation_size)
            writers["train"].write_lines(list(itertools.compress(lines, new & ~validation)))
            writers["validation"].write_lines(list(itertools.compress(lines, new & validation)))
        spill.remove()
        duplicates = spill.repeats + spill.count - int(keep.sum())
        shards = {split: w.close() for split, w in writers.items()}
        dropped.update(stats.dropped)
        if stats.bad_lines:
            named = ", ".join(f"{b['file']} line {b['line']} ({b['reason']})" for b in stats.bad_lines)
            bad = sum(stats.dropped.get(r, 0) for r in BAD_LINE_REASONS)
            print(f"warning: {bad} line(s) dropped as unreadable: {named}"
                  + (" and more; counts by reason in manifest.json" if bad > len(stats.bad_lines) else ""),
                  file=sys.stderr)
        # rows: texts seen and rows dropped unread; with --line-per value a row gives several texts, so its readers'
        # own count of rows is the one
        rows_read = stats.rows_read if cfg.line_per == "value" else rows_seen + sum(stats.dropped.values())
        repeats.repeats += stats.repeats_in_workers
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
        redacted = [redact(f) for f in cfg.data_files] if cfg.data_files else cfg.data_files
        manifest = {
            "source": {"data_files": redacted, "dataset": cfg.dataset, "dataset_config": cfg.dataset_config,
                       "files": [f for f in files if not is_remote(f)],
                       "remote_files": describe_remote(remote) if (remote := [f for f in files if is_remote(f)]) else [],
                       "text_columns": stats.columns or cfg.text_columns},
            "arguments": {k: v for k, v in asdict(cfg).items() if k != "progress"} | {"data_files": redacted},
            "rows_read": rows_read,
            "rows_kept": kept,
            "dropped": dict(sorted(dropped.items())),
            "bad_lines": stats.bad_lines,
            "duplicates_removed": duplicates + repeats.repeats,
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
