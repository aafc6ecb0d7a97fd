"""The wanted keys of JSON Lines blocks (Amazon Reviews 2023, McAuley 2018, any one-object-per-line file).

A block of whole lines is parsed by pyarrow's JSON reader with an explicit schema of the wanted keys alone:
every other key, however nested or free-form (`details`, `images`), is skipped in C++ without building a
Python object. A block it cannot take as a whole (a bad line, a value of another type, a line with two
objects) is parsed again line by line with `json.loads`, which finds the lines at fault and counts them.
The first lines of a file are parsed one by one too: they type the wanted keys and tell a JSON Lines file
from something else.
"""
import json
from typing import Any

from common import UsageError

JSON_SAMPLE_LINES = 10_000  # the first lines of a file, parsed one by one to check it and type its keys
TEXT_TYPES = ("string", "list of strings")
# The keys of an Amazon Reviews 2023 review line: its `title` is the review's headline, not the product's.
REVIEW_2023_KEYS = {"rating", "title", "text", "asin", "parent_asin", "user_id", "verified_purchase"}


def value_at(row: dict, path: tuple[str, ...]) -> Any:
    """The value at a key path ("details", "Brand"), or None where any step is missing or not an object."""
    value: Any = row
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def type_name(value: Any) -> str:
    """A JSON value's type, as the messages name it."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list of strings" if all(isinstance(v, str) or v is None for v in value) else "list of other values"
    return "null"


def is_usable(value: Any, text: bool) -> bool:
    """Text is a string or a list of strings (or nothing); other readers take any value but an object."""
    if value is None or isinstance(value, str):
        return True
    if text:  # a null item in a list is skipped, as pyarrow's list<string> gives it
        return isinstance(value, list) and all(isinstance(v, str) or v is None for v in value)
    return not isinstance(value, dict)


class JsonLinesBlocks:
    """Parses blocks of whole lines of one file into rows of the wanted values, counting the lines it drops."""

    def __init__(self, path: str, columns: list[str] | None, stats, text: bool = True) -> None:
        self.path, self.requested, self.stats, self.text = path, columns, stats, text
        self.paths: list[tuple[str, ...]] = []
        self.parse_options = None
        self.line = 1  # the number of the next block's first line

    def rows(self, data: bytes) -> list[tuple]:
        """The rows of a block of whole lines (it ends with b"\\n"), in order, bad lines left out."""
        lines = data.count(b"\n")
        first, self.line = self.line, self.line + lines
        if self.parse_options is None and not self._choose_columns(data):
            return []  # blank lines only, so far: the next block chooses the columns
        try:
            return self._fast(data, lines)
        except Exception:  # pyarrow refused the block (ArrowInvalid, a UnicodeDecodeError): find the lines at fault
            return self._slow(data, first)

    def _fast(self, data: bytes, lines: int) -> list[tuple]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pj

        options = pj.ReadOptions(use_threads=False, block_size=len(data) + 1)  # one chunk: lines never straddle
        table = pj.read_json(pa.BufferReader(data), read_options=options, parse_options=self.parse_options)
        if table.num_rows != lines:  # a blank line, or two objects on one: count lines one by one
            raise ValueError("rows are not lines")
        columns = []
        for path in self.paths:
            column = table.column(path[0])
            if len(path) > 1:
                column = pc.struct_field(column, list(path[1:]))
            columns.append(column.to_pylist())
        self.stats.rows_read += table.num_rows
        return list(zip(*columns))

    def _slow(self, data: bytes, first: int) -> list[tuple]:
        rows = []
        for number, line in enumerate(data.split(b"\n")[:-1], first):
            if not line.strip():
                continue
            self.stats.rows_read += 1
            try:
                row = json.loads(line)
            except UnicodeDecodeError:
                self.stats.drop_line("bad_utf8", self.path, number)
                continue
            except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
                self.stats.drop_line("bad_json", self.path, number)
                continue
            if not isinstance(row, dict):
                self.stats.drop_line("not_an_object", self.path, number)
                continue
            values = tuple(value_at(row, path) for path in self.paths)
            if all(is_usable(v, self.text) for v in values):
                rows.append(values)
            else:
                self.stats.drop_line("bad_type", self.path, number)
        return rows

    def _choose_columns(self, data: bytes) -> bool:
        """Check the file's first lines, choose the columns and type them for pyarrow; False while the file has
        shown nothing but blank lines."""
        sample, bad = [], 0
        for line in data.split(b"\n", JSON_SAMPLE_LINES)[:JSON_SAMPLE_LINES]:
            if line.strip():
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    row = None
                if isinstance(row, dict):
                    sample.append(row)
                else:
                    bad += 1
        if not sample and not bad:
            return False
        if bad > (len(sample) + bad) / 2:
            raise UsageError(f"{self.path!r} is not JSON Lines: {bad} of its first {len(sample) + bad} lines are "
                             "not JSON objects; pass one object per line (a .json array is read whole) or check "
                             "--data-files")
        keys = list(dict.fromkeys(k for row in sample for k in row))
        kinds = {}  # each path's value types in the sample, read once for the check and the schema
        columns = self._columns(keys)
        self.paths = [self._path(column, keys) for column in columns]
        for column, path in zip(columns, self.paths):
            found = [type_name(v) for v in (value_at(row, path) for row in sample) if v is not None]
            self._check_text(column, path, found, sample)
            kinds[path] = max(set(found), key=found.count) if found else "string"
        self.stats.columns = [".".join(p) for p in self.paths]
        if self.stats.columns == ["title"] and REVIEW_2023_KEYS <= set(keys):
            self.stats.note = ("this is an Amazon Reviews 2023 review file: its `title` is the review's headline; "
                               "pass --text-column text for the reviews, or read the meta_*.jsonl files for product "
                               "titles")
        self.parse_options = self._parse_options(kinds, sample)
        return True

    def _columns(self, keys: list[str]) -> list[str]:
        from corpus.sources import DEFAULT_TEXT_COLUMNS

        if self.requested is None:
            return [next((c for c in DEFAULT_TEXT_COLUMNS if c in keys), DEFAULT_TEXT_COLUMNS[0])]
        return self.requested

    def _path(self, column: str, keys: list[str]) -> tuple[str, ...]:
        """The key path of a column ("details.Brand" reads a nested key); its first key must be in the sample."""
        path = (column,) if column in keys else tuple(column.split("."))
        if path[0] not in keys:
            raise UsageError(f"column {column} not in {self.path!r}; its keys are: {', '.join(keys)} "
                             "(choose with --text-column; a dotted path such as details.Brand reads a nested key)")
        return path

    def _check_text(self, column: str, path: tuple[str, ...], found: list[str], sample: list[dict]) -> None:
        """With `text`, a column whose sampled values are none of them text is refused, naming what they are."""
        if not self.text or not found or any(t in TEXT_TYPES for t in found):
            return
        kind = max(set(found), key=found.count)
        if kind == "object":
            nested = list(dict.fromkeys(k for row in sample for k in (value_at(row, path) or {})))[:5]
            hint = f"; read one of its keys with a dotted path, such as --text-column {column}.{nested[0]}" \
                if nested else ""
            raise UsageError(f"column {column} of {self.path!r} holds objects, not text{hint}")
        kinds = {"number": "numbers", "boolean": "booleans", "list of other values": "lists of non-strings"}
        raise UsageError(f"column {column} of {self.path!r} holds {kinds.get(kind, kind)}, not text; choose a "
                         "column of strings or lists of strings with --text-column")

    def _parse_options(self, kinds: dict[tuple[str, ...], str], sample: list[dict]):
        """pyarrow's parse options: the wanted key paths alone, typed as the sample has them."""
        import pyarrow as pa
        import pyarrow.json as pj

        tree: dict = {}
        for path, kind in kinds.items():
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key, {})
            if self.text:  # text is typed as text, so that pyarrow refuses a block with another type in it
                kind = "list of strings" if kind == "list of strings" else "string"
            node[path[-1]] = _arrow_type(kind, sample, path)

        def fields(node: dict) -> list:
            return [pa.field(k, pa.struct(fields(v)) if isinstance(v, dict) else v) for k, v in node.items()]

        return pj.ParseOptions(explicit_schema=pa.schema(fields(tree)), unexpected_field_behavior="ignore")


def _arrow_type(kind: str, sample: list[dict], path: tuple[str, ...]):
    import pyarrow as pa

    if kind == "list of strings":
        return pa.list_(pa.string())
    if kind == "boolean":
        return pa.bool_()
    if kind == "number":  # integers stay integers unless the sample holds a float
        floats = any(isinstance(value_at(row, path), float) for row in sample)
        return pa.float64() if floats else pa.int64()
    return pa.string()  # strings, and anything else, which the line-by-line parse then sorts out
