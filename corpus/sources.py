"""Read raw rows from Amazon review TSVs, local tables or the Hugging Face hub, as text batches."""
import glob
import logging
import os
import queue
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from common import PipelineError, UsageError
from corpus.json_lines import JsonLinesBlocks
from corpus.remote import expand_remote, is_remote, open_remote, redact

DEFAULT_TEXT_COLUMNS = ("product_title", "title", "text")  # tried in order when none is named
DATASETS_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
TSV_SUFFIXES = (".tsv", ".tsv.gz")
BATCH_ROWS = 10_000
JSON_LINES_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
BAD_LINES_NAMED = 5
AMAZON_2023 = "McAuley-Lab/Amazon-Reviews-2023"  # a loading script on the hub: its JSON Lines files are read instead
READ_BYTES = 1 << 20  # a TSV is read (and decompressed) this many file bytes at a time


@dataclass
class SourceStats:
    """What the reader saw: rows read and rows it could not use, by reason."""

    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    repeats_in_workers: int = 0  # rows dropped as exact repeats inside per-file worker processes
    bad_lines: list[dict] = field(default_factory=list)  # the first few lines dropped, by file and line number
    columns: list[str] | None = None  # the columns read, once a reader has chosen them
    note: str = ""  # what the user should know of those columns (a 2023 review file's `title`, say)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def merge(self, other: "SourceStats") -> None:
        """Add what another reader (a block parsed in a thread, a file in a worker) saw."""
        self.rows_read += other.rows_read
        for reason, n in other.dropped.items():
            self.drop(reason, n)
        self.bad_lines += other.bad_lines[: max(0, BAD_LINES_NAMED - len(self.bad_lines))]
        self.columns, self.note = self.columns or other.columns, self.note or other.note

    def drop_line(self, reason: str, path: str, line: int) -> None:
        """Count a dropped line, and keep where it was if it is one of the first BAD_LINES_NAMED."""
        self.drop(reason)
        if len(self.bad_lines) < BAD_LINES_NAMED:
            self.bad_lines.append({"file": path, "line": line, "reason": reason})


def expand_data_files(patterns: list[str]) -> list[str]:
    """Expand paths and globs, in a stable order; every pattern must match a readable file."""
    files: list[str] = []
    for pattern in patterns:
        if is_remote(pattern):
            files.extend(m for m in expand_remote(pattern) if m not in files)
            continue
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UsageError(f"--data-files {pattern!r} matches no file; check the path or glob")
        files.extend(m for m in matches if m not in files)
    for f in files:
        if not is_remote(f) and not os.access(f, os.R_OK):
            raise UsageError(f"cannot read {f!r}; check its permissions")
    return files


def file_kind(path: str) -> str:
    """'tsv' for Amazon review TSVs, else the `datasets` builder name for the file's extension."""
    name = file_name(path).lower()
    if name.endswith(TSV_SUFFIXES):
        return "tsv"
    if name.endswith(JSON_LINES_SUFFIXES):
        return "jsonl"  # a .json file holding one array goes to `datasets` (read_row_batches)
    stem, ext = os.path.splitext(name[:-3] if name.endswith(".gz") else name)
    if ext in DATASETS_BUILDERS:
        return DATASETS_BUILDERS[ext]
    raise UsageError(f"unsupported file type {path!r}; use .tsv(.gz), .jsonl(.gz), .json(.gz), .csv, .parquet or .txt(.gz)")


def file_name(path: str) -> str:
    """The path without a URL's query string or fragment: what its type is read from."""
    return path.split("?", 1)[0].split("#", 1)[0] if is_remote(path) else path


def open_binary(path: str):
    """A local file or a remote one (streamed), opened for reading bytes."""
    return open_remote(path) if is_remote(path) else open(path, "rb")


def resolve_columns(requested: list[str] | None, available: list[str], where: str) -> list[str]:
    """Check the text columns exist; with none requested, pick the first default that does."""
    if requested is None:
        for name in DEFAULT_TEXT_COLUMNS:
            if name in available:
                return [name]
        requested = [DEFAULT_TEXT_COLUMNS[0]]
    missing = [c for c in requested if c not in available]
    if missing:
        raise UsageError(
            f"column {', '.join(missing)} not in {where}; its columns are: {', '.join(available)} "
            "(choose with --text-column)"
        )
    return requested


def read_amazon_tsv(path: str, columns: list[str] | None, stats: SourceStats,
                    text: bool = True) -> Iterator[list[tuple[str, ...]]]:
    """Batches of rows (the wanted columns' values) from one Amazon Customer Reviews TSV, plain or gzipped.

    The format is tab separated with no quoting at all: a '"' is part of the text (12" Doll).
    Rows with the wrong number of fields or undecodable UTF-8 in a wanted field are counted and skipped.
    Lines are cut from large blocks that a background thread reads and decompresses (zlib runs
    without the GIL), and only the wanted fields are split off, so a long review body costs nothing.
    """
    carry, header = b"", None
    for block in _read_ahead(path):
        data, carry = whole_lines(carry, block)
        if header is None:
            if not data and block and len(carry) < 1 << 16:
                continue  # the header line is not complete yet
            first = data.find(b"\n")
            header = _tsv_header(data[:first] if data else carry[: 1 << 16], path)
            data = data[first + 1 :] if data else b""
            wanted = stats.columns = resolve_columns(columns, header, path)
            index = [header.index(c) for c in wanted]
        if data:
            yield from _tsv_batches(data, index, len(header), stats)
    if header is None:
        _tsv_header(carry, path)


def whole_lines(carry: bytes, block: bytes) -> tuple[bytes, bytes]:
    """(the whole lines of carry + block, what is left of the last one); the last block, b"", ends the last line.

    The block is copied once (not joined whole, then sliced): over a file, these copies are its whole size."""
    if not block:
        return (carry + b"\n" if carry else b""), b""
    cut = block.rfind(b"\n") + 1
    if not cut:
        return b"", carry + block
    return b"".join((carry, memoryview(block)[:cut])), block[cut:]


def _text_lines(carry: bytes, block: bytes) -> tuple[bytes, bytes]:
    """`whole_lines`, where "\r\n" and a lone "\r" end a line too (both become "\n")."""
    data, held = carry + block, b""
    if block and data.endswith(b"\r"):  # the "\n" of a "\r\n" may open the next block
        data, held = data[:-1], b"\r"
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not block and data and not data.endswith(b"\n"):
        data += b"\n"
    whole = data.rfind(b"\n") + 1
    return data[:whole], data[whole:] + held


def read_text_lines(path: str, columns: list[str] | None, stats: SourceStats,
                    text: bool = True) -> Iterator[list[tuple[str]]]:
    """Batches of 1-tuples, one per line of a plain or gzipped text file (its one column is 'text').

    Read like a TSV, in large blocks, rather than through `datasets`: no Arrow copy on disk, memory flat
    whatever the file's size, and a line with bad UTF-8 is counted and skipped instead of failing the run.
    Lines end as in Python's text mode (which `datasets` used): at "\n", "\r\n" or a lone "\r".
    """
    stats.columns = resolve_columns(columns, ["text"], path)
    carry, first = b"", True
    for block in _read_ahead(path):
        if first and b"\x00" in block[: 1 << 16]:
            raise UsageError(f"{path!r} is not UTF-8 text (it holds NUL bytes: UTF-16 or binary?); "
                             "convert it to UTF-8 or check --data-files")
        first = False
        data, carry = _text_lines(carry, block)
        if not data:
            continue
        try:
            lines = data[:-1].decode("utf-8").split("\n")
        except UnicodeDecodeError:
            lines = []
            for line in data[:-1].split(b"\n"):
                try:
                    lines.append(line.decode("utf-8"))
                except UnicodeDecodeError:
                    stats.drop("bad_utf8")
        stats.rows_read += data.count(b"\n")
        for start in range(0, len(lines), BATCH_ROWS):
            yield [(line,) for line in lines[start : start + BATCH_ROWS]]


def read_json_lines(path: str, columns: list[str] | None, stats: SourceStats,
                    text: bool = True) -> Iterator[list[tuple]]:
    """Batches of rows (the wanted keys' values) from a JSON Lines file, plain or gzipped, local or remote.

    Read in large blocks like a TSV (no Arrow copy on disk, memory flat whatever the file's size); each
    block's wanted keys are decoded by pyarrow, and a line that is not a JSON object, or whose wanted value
    is not usable, is counted and skipped with its line number (corpus/json_lines.py). A dotted column
    (details.Brand) reads a nested key. With `text`, values are strings or lists of strings.
    """
    def parsed() -> Iterator[tuple[list[tuple], SourceStats]]:
        parser, carry = JsonLinesBlocks(redact(path), columns, SourceStats(), text), b""
        for block in _read_ahead(path):
            data, carry = whole_lines(carry, block)
            if data:  # each block's counts travel with its rows: the caller sees only the blocks it took
                parser.stats = SourceStats()
                yield parser.rows(data), parser.stats

    # pyarrow parses in a thread of its own (without the GIL), between the thread that inflates and this one
    for rows, block_stats in in_background(parsed(), depth=2):
        stats.merge(block_stats)
        for start in range(0, len(rows), BATCH_ROWS):
            yield rows[start : start + BATCH_ROWS]


def _tsv_header(line: bytes, path: str) -> list[str]:
    try:
        header = line.rstrip(b"\r").decode("utf-8-sig").split("\t")  # -sig: drops the BOM that Excel and Notepad write
    except UnicodeDecodeError:
        header = []
    if len(header) < 2 or not all(name.isprintable() and name for name in header):
        raise UsageError(f"{path!r} is not a tab-separated file with a header row; check --data-files")
    return header


def _decompressed(path: str, chunk_bytes: int) -> Iterator[bytes]:
    """The bytes of a plain or gzipped file (several gzip members too), in large blocks.

    A local gzip is inflated by pyarrow's codec, a third faster than the zlib module's here and without the
    GIL too; what it does not take (NUL padding after a member, bytes that are not gzip) goes to the zlib
    reader, from where pyarrow stopped, which skips the padding or names the fault."""
    if not file_name(path).lower().endswith(".gz") or is_remote(path):
        yield from _inflated(path, chunk_bytes)
        return
    import pyarrow as pa

    done = 0
    try:
        with pa.input_stream(path, compression="gzip", buffer_size=chunk_bytes) as inflate:
            while block := inflate.read(4 * chunk_bytes):
                done += len(block)
                yield block
        return
    except OSError as e:
        if e.errno is not None:
            raise
        if "truncated" in str(e).lower():
            raise EOFError("it ends before its end-of-stream marker: the file is truncated") from e
    for block in _inflated(path, chunk_bytes):
        yield block[done:] if done < len(block) else b""
        done = max(0, done - len(block))


def _inflated(path: str, chunk_bytes: int) -> Iterator[bytes]:
    """`_decompressed`, by Python's zlib module: any file, local or remote."""
    with open_binary(path) as raw:
        if not file_name(path).lower().endswith(".gz"):
            yield from iter(lambda: _read_full(raw, 4 * chunk_bytes), b"")
            return
        inflate, in_member = zlib.decompressobj(wbits=31), False
        while chunk := _read_full(raw, chunk_bytes):
            while chunk:
                in_member = True
                yield inflate.decompress(chunk)
                chunk = b""
                if inflate.eof:  # a member ends; what follows is another one, or padding
                    chunk, inflate, in_member = inflate.unused_data.lstrip(b"\0"), zlib.decompressobj(wbits=31), False
        if in_member and not inflate.eof:
            raise EOFError("it ends before its end-of-stream marker: the file is truncated")


def in_background(items: Iterator, depth: int = 4) -> Iterator:
    """The items of `items`, produced ahead by a background thread; its errors are raised here, in order. When
    the caller stops early (a closed or dropped generator), the thread stops too, and closes `items`."""
    ahead: queue.Queue = queue.Queue(depth)
    stop, done = threading.Event(), object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                ahead.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as e:  # every error reaches the caller: a thread that died silently would hang it
            put((done, e))
        finally:
            if hasattr(items, "close"):
                items.close()

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            item, error = ahead.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()


def _read_full(raw: Any, size: int) -> bytes:
    """`size` bytes, or fewer at the end: a remote stream's read() returns what has arrived, which can be a few
    kB, and the first block must hold enough lines to check a file by."""
    parts, got = [], 0
    while got < size and (part := raw.read(size - got)):
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_ahead(path: str, depth: int = 4) -> Iterator[bytes]:
    """`_decompressed(path)`, produced by a background thread, then a final b""."""
    try:
        yield from in_background((block for block in _decompressed(path, READ_BYTES) if block), depth)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise PipelineError(f"could not read {path!r}: {e.strerror}; check the file") from e
        raise UsageError(f"{path!r} is not a readable gzip or text file ({e}); check --data-files") from e
    yield b""


def _tsv_batches(data: bytes, index: list[int], n_fields: int,
                 stats: SourceStats) -> Iterator[list[tuple[str, ...]]]:
    """The wanted fields of the well-formed lines of `data` (whole lines), decoded, in batches of BATCH_ROWS.

    Lines and fields are found with numpy over the whole block, so a line costs one slice per wanted
    field, whatever its length.
    """
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    if not len(ends):
        return
    tabs = np.flatnonzero(buf == ord("\t"))
    starts = np.concatenate(([0], ends[:-1] + 1))
    first_tab = np.searchsorted(tabs, starts)
    good = np.searchsorted(tabs, ends) - first_tab == n_fields - 1
    n_good = int(good.sum())
    stats.rows_read += len(ends)
    if n_good < len(ends):
        stats.drop("malformed_row", len(ends) - n_good)
    starts, ends, first_tab = starts[good], ends[good], first_tab[good]
    spans = []
    for i in index:
        lo = starts if i == 0 else tabs[first_tab + i - 1] + 1
        hi = ends if i == n_fields - 1 else tabs[first_tab + i]
        if i == n_fields - 1:  # the last field: drop a Windows line end
            while (cr := (hi > lo) & (buf[hi - 1] == ord("\r"))).any():
                hi = hi - cr
        spans.append((lo.tolist(), hi.tolist()))
    for start in range(0, n_good, BATCH_ROWS):
        stop = start + BATCH_ROWS
        raw = [[data[a:b] for a, b in zip(lo[start:stop], hi[start:stop])] for lo, hi in spans]
        try:  # one decode per column and batch; a field holds no newline, so joining is safe
            yield list(zip(*(b"\n".join(column).decode("utf-8").split("\n") for column in raw)))
        except UnicodeDecodeError:  # rare: find the rows at fault one by one
            batch = []
            for row in zip(*raw):
                try:
                    batch.append(tuple(field.decode("utf-8") for field in row))
                except UnicodeDecodeError:
                    stats.drop("bad_utf8")
            yield batch


def read_hf_dataset(dataset, columns: list[str] | None, stats: SourceStats, where: str,
                    text: bool = True) -> Iterator[list[tuple]]:
    """Batches of rows (the wanted columns' values) from a `datasets` Dataset or IterableDataset."""
    available = list(dataset.column_names or [])
    if not available:  # streaming datasets may only know their columns after the first row
        dataset = dataset._resolve_features()
        available = list(dataset.column_names)
    wanted = resolve_columns(columns, available, where)
    stats.columns = wanted
    if text:
        for c in wanted:
            _check_text_feature(c, (dataset.features or {}).get(c), where)
    for rows in dataset.select_columns(wanted).iter(batch_size=BATCH_ROWS):
        n = len(rows[wanted[0]])
        stats.rows_read += n
        yield list(zip(*(rows[c] for c in wanted)))


def _check_text_feature(column: str, feature, where: str) -> None:
    """A column of numbers or booleans is not text: one line naming its type (lists of strings are text)."""
    import datasets

    lists = (datasets.Sequence, getattr(datasets, "List", datasets.Sequence))  # List: datasets>=4
    inner = feature.feature if isinstance(feature, lists) else feature
    dtype = getattr(inner, "dtype", None)
    if isinstance(inner, dict):
        raise UsageError(f"column {column} of {where} holds objects, not text; choose a text column with --text-column")
    if dtype is not None and dtype not in ("string", "large_string", "null"):
        raise UsageError(f"column {column} of {where} holds {dtype} values, not text; choose a text column with "
                         "--text-column")


def load_local_dataset(files: list[str], builder: str, cache_dir: str | None, streaming: bool):
    """Load local csv/json/parquet/txt files with `datasets` as one split."""
    import datasets

    logging.getLogger("datasets").setLevel(logging.CRITICAL)  # we report failures ourselves, in one line
    try:
        loaded = datasets.load_dataset(
            builder, data_files={"train": files}, split="train", cache_dir=cache_dir, streaming=streaming
        )
    except Exception as e:  # datasets raises many types for unreadable files
        raise PipelineError(f"could not read {files[0]!r} as {builder}: {_first_line(e)}; check the file") from e
    return loaded


def load_hub_dataset(name: str, config: str | None, cache_dir: str | None, streaming: bool) -> list:
    """Load every split of a hub dataset (we make our own split), or explain how to do without the hub."""
    import datasets

    for library in ("datasets", "huggingface_hub"):  # we report failures ourselves, in one line
        logging.getLogger(library).setLevel(logging.CRITICAL)
    try:
        loaded = datasets.load_dataset(name, config, cache_dir=cache_dir, streaming=streaming)
    except Exception as e:  # offline, missing, gated or script-based: all end the same way
        if "scripts are no longer supported" in str(e):
            raise UsageError(
                f"hub dataset {name!r} is a loading script, which `datasets` no longer runs (since 4.0); read its "
                f"data files instead: --data-files 'hf://datasets/{name}/PATH' (globs work)") from None
        raise PipelineError(
            f"could not load hub dataset {name!r} ({_first_line(e)}); if the hub is unreachable or the "
            "dataset needs a loading script, download its data files and pass them with --data-files"
        ) from e
    return [loaded[s] for s in loaded]


def script_dataset_files(name: str, config: str | None) -> tuple[str, str] | None:
    """(the --data-files, the --text-column) that read what a known script-based hub dataset's config holds."""
    if name != AMAZON_2023:
        return None
    root = f"hf://datasets/{AMAZON_2023}/raw"
    if config and config.startswith("raw_meta_"):
        return f"{root}/meta_categories/meta_{config.removeprefix('raw_meta_')}.jsonl", "title"
    if config and config.startswith("raw_review_"):
        return f"{root}/review_categories/{config.removeprefix('raw_review_')}.jsonl", "text"
    return f"{root}/meta_categories/meta_*.jsonl", "title"  # every category's product titles


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def read_row_batches(
    files: list[str],
    dataset: str | None,
    dataset_config: str | None,
    columns: list[str] | None,
    stats: SourceStats,
    cache_dir: str | None = None,
    streaming: bool = False,
    text: bool = True,
) -> Iterator[list[tuple]]:
    """Batches of rows, each the tuple of the wanted columns' values, from a hub dataset or files.

    `files` are paths as `expand_data_files` gives them: they are never expanded again (a name holding "[" or
    "*" would be read as a glob). With `text`, the columns must hold text (strings or lists of strings).
    """
    if dataset:
        for split in load_hub_dataset(dataset, dataset_config, cache_dir, streaming):
            yield from read_hf_dataset(split, columns, stats, f"hub dataset {dataset!r}", text)
        return
    kinds = {file_kind(f) for f in files}
    if len(kinds) > 1:
        raise UsageError(f"--data-files mixes file types ({', '.join(sorted(kinds))}); pass one type per run")
    kind = kinds.pop()
    if kind == "jsonl" and any(_is_json_array(f) for f in files):
        kind = "json"  # a .json file holding one array: `datasets` reads it whole
    if kind in NATIVE_READERS:
        for f in files:
            yield from NATIVE_READERS[kind](f, columns, stats, text)
    else:
        loaded = load_local_dataset(files, kind, cache_dir, streaming)
        yield from read_hf_dataset(loaded, columns, stats, f"{files[0]!r}", text)


def _is_json_array(path: str) -> bool:
    """Whether a .json file holds one JSON array rather than one object per line."""
    if not file_name(path).lower().endswith((".json", ".json.gz")):
        return False
    blocks = _decompressed(path, 1 << 16)
    try:  # read in this thread, and closed at once: only the first bytes are needed
        for block in blocks:
            if block.strip():
                return block.lstrip().startswith(b"[")
    except (OSError, EOFError, zlib.error):
        return False  # the reader proper will say what is wrong with it
    finally:
        blocks.close()
    return False


NATIVE_READERS = {"tsv": read_amazon_tsv, "text": read_text_lines, "jsonl": read_json_lines}  # read in blocks here


def read_text_batches(
    files: list[str],
    dataset: str | None,
    dataset_config: str | None,
    columns: list[str] | None,
    stats: SourceStats,
    cache_dir: str | None = None,
    streaming: bool = False,
    line_per: str = "row",
) -> Iterator[list[str]]:
    """Batches of raw text. A list of strings is text too. With `line_per` "row", a row is one text: its
    columns, and a list's items, joined with a space (missing values skipped). With "value", each string and
    each list item is a text of its own (a row with none gives one empty text, so that it is counted)."""
    for rows in read_row_batches(files, dataset, dataset_config, columns, stats, cache_dir, streaming):
        if line_per == "value":
            yield [t for row in rows for t in (_strings(row) or [""])]
        elif rows and len(rows[0]) == 1 and set(map(type, texts := [v for (v,) in rows])) == {str}:
            yield texts
        else:
            yield [" ".join(_strings(row)) for row in rows]


def _strings(row: tuple) -> list[str]:
    """The non-empty strings of a row's values, a list's items in order."""
    out = []
    for value in row:
        if isinstance(value, str):
            if value:
                out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str) and v)
    return out
