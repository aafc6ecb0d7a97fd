"""Step 1 on JSON Lines: Amazon Reviews 2023 (reviews and item metadata), McAuley 2018, gzip, bad lines, lists,
nested keys, wrong types, .json arrays, and no `datasets` cache copy."""
import json
import os
import subprocess
import sys

import pytest

from amazon2023 import meta_rows, review_2018_rows, review_rows, write_jsonl
from common import UsageError
from conftest import REPO
from corpus import sources
from corpus.json_lines import JsonLinesBlocks
from corpus.normalise import normalise_text
from corpus.pipeline import CorpusConfig, generate_corpus
from corpus.sources import SourceStats, read_json_lines
from test_corpus import read_split


def run(tmp_path, files, name="out", **kwargs) -> tuple[list[str], dict]:
    out = str(tmp_path / name)
    files = [str(f) for f in (files if isinstance(files, list) else [files])]
    manifest = generate_corpus(CorpusConfig(output_dir=out, data_files=files, progress=False, **kwargs))
    return read_split(out, "train") + read_split(out, "validation"), manifest


def expected(rows: list[dict], get) -> set[str]:
    """The line-by-line rule: each row's text, normalised, empty ones dropped."""
    return {s for s in (normalise_text(get(row) or "") for row in rows) if s}


@pytest.mark.parametrize("layout, column, get", [
    ("review", "text", lambda r: r["text"]),
    ("review", None, lambda r: r["title"]),  # the default: a 2023 review file's `title` is the review's headline
    ("meta", None, lambda r: r["title"]),  # the product title, the demo's column
    ("2018", "reviewText", lambda r: r["reviewText"]),
    ("2018", "summary", lambda r: r["summary"]),
])
def test_amazon_layouts_give_the_line_by_line_corpus(tmp_path, layout, column, get):
    rows = {"review": review_rows, "meta": meta_rows, "2018": review_2018_rows}[layout](300)
    write_jsonl(str(tmp_path / "data.jsonl"), rows)
    lines, manifest = run(tmp_path, tmp_path / "data.jsonl", text_columns=[column] if column else None)
    assert sorted(lines) == sorted(expected(rows, get))
    assert manifest["rows_read"] == 300 and manifest["source"]["text_columns"] == [column or "title"]
    assert all(line.isprintable() for line in lines)  # <br />, entities and \u escapes resolved, no surrogates


def test_gzip_and_several_files_read_alike(tmp_path):
    rows = meta_rows(400)
    write_jsonl(str(tmp_path / "all.jsonl"), rows)
    write_jsonl(str(tmp_path / "a.jsonl.gz"), rows[:250])
    write_jsonl(str(tmp_path / "b.json.gz"), rows[250:])  # .json with one object per line: JSON Lines too
    plain, _ = run(tmp_path, tmp_path / "all.jsonl", "plain")
    gzipped, manifest = run(tmp_path, [tmp_path / "a.jsonl.gz", tmp_path / "b.json.gz"], "gz")
    parallel, _ = run(tmp_path, [tmp_path / "a.jsonl.gz", tmp_path / "b.json.gz"], "par", num_proc=2)
    assert plain == gzipped == parallel and manifest["rows_read"] == 400


def test_a_2023_review_file_says_its_title_is_the_headline(tmp_path):
    write_jsonl(str(tmp_path / "All_Beauty.jsonl"), review_rows(50))
    result = subprocess.run([sys.executable, "corpus/run_corpus_generation.py", "--data-files",
                             str(tmp_path / "All_Beauty.jsonl"), "--output-dir", str(tmp_path / "out")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "reading column title of 1 file(s)" in result.stderr and "review's headline" in result.stderr


BAD = {3: b'{"title": "cut off', 10: b"[1, 2, 3]", 20: b'{"title": 5}', 30: b'{"title": "caf\xe9"}', 40: b"",
       41: b"   "}


@pytest.mark.parametrize("read_bytes", [1 << 20, 700])  # one block, and lines cut across many small blocks
def test_bad_lines_are_counted_by_reason_with_their_line_numbers(tmp_path, monkeypatch, capsys, read_bytes):
    monkeypatch.setattr(sources, "READ_BYTES", read_bytes)
    rows = meta_rows(200)
    write_jsonl(str(tmp_path / "meta.jsonl.gz"), rows, BAD)
    lines, manifest = run(tmp_path, tmp_path / "meta.jsonl.gz")
    assert sorted(lines) == sorted(expected(rows, lambda r: r["title"]))  # every good line, and only those
    assert manifest["dropped"] == {"bad_json": 1, "bad_type": 1, "bad_utf8": 1, "not_an_object": 1}
    assert manifest["rows_read"] == 204  # blank lines are not rows
    named = [(b["line"], b["reason"]) for b in manifest["bad_lines"]]
    assert named == [(4, "bad_json"), (11, "not_an_object"), (21, "bad_type"), (31, "bad_utf8")]  # 1-based
    err = capsys.readouterr().err
    assert "warning: 4 line(s) dropped" in err and "meta.jsonl.gz line 21 (bad_type)" in err


def test_the_fast_and_the_line_by_line_parse_agree(tmp_path):
    rows = meta_rows(100) + [{"title": None}, {"features": ["a"]}, {"title": "", "details": None},
                             {"features": ["x", None]}]  # a null item is skipped by both
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    for columns in (["title"], ["title", "features", "details.Brand", "description"]):
        fast, slow = JsonLinesBlocks("f", columns, SourceStats()), JsonLinesBlocks("f", columns, SourceStats())
        head = b"\n".join(data.split(b"\n")[:3]) + b"\n"
        fast.rows(head)  # the first block types the columns
        slow.rows(head)
        assert fast._fast(data, len(rows)) == slow._slow(data, 1)


def test_a_file_that_is_mostly_not_json_lines_is_refused_in_one_line(tmp_path):
    (tmp_path / "notes.jsonl").write_text("\n".join(f"note {i}: not json" for i in range(100)) + '\n{"title": "x"}\n')
    with pytest.raises(UsageError, match="is not JSON Lines: 100 of its first 101 lines"):
        run(tmp_path, tmp_path / "notes.jsonl")
    (tmp_path / "pretty.json").write_text(json.dumps({"title": "x", "rows": [1, 2]}, indent=2))
    with pytest.raises(UsageError, match="is not JSON Lines"):
        run(tmp_path, tmp_path / "pretty.json")


def test_lists_of_strings_are_text_joined_or_one_line_each(tmp_path):
    rows = meta_rows(60)
    write_jsonl(str(tmp_path / "meta.jsonl"), rows)
    joined, _ = run(tmp_path, tmp_path / "meta.jsonl", "joined", text_columns=["title", "features", "description"])
    want = expected(rows, lambda r: " ".join([r["title"], *r["features"], *r["description"]]))
    assert sorted(joined) == sorted(want)
    each, _ = run(tmp_path, tmp_path / "meta.jsonl", "each", text_columns=["features"], line_per="value")
    assert sorted(each) == sorted({normalise_text(f) for r in rows for f in r["features"] if f})
    assert "Restores leather 1" in each and "Made in USA \U0001F1FA\U0001F1F8" in each


def test_a_dotted_path_reads_a_nested_key_whatever_else_details_holds(tmp_path):
    rows = meta_rows(80)
    write_jsonl(str(tmp_path / "meta.jsonl"), rows)
    brands, _ = run(tmp_path, tmp_path / "meta.jsonl", text_columns=["details.Brand"], validation_size=0.5)
    assert sorted(brands) == sorted({r["details"]["Brand"] for r in rows if "Brand" in r["details"]})


@pytest.mark.parametrize("column, words", [
    ("average_rating", "holds numbers, not text"),
    ("bought_together", None),  # always null: no text, nothing to type; the run ends with "no sentence left"
    ("details", "holds objects, not text; read one of its keys with a dotted path, such as --text-column details."),
    ("images", "holds lists of non-strings, not text"),
    ("price", "holds numbers, not text"),
    ("no_such_key", "column no_such_key not in"),
])
def test_columns_that_are_not_text_are_one_line_errors(tmp_path, column, words):
    write_jsonl(str(tmp_path / "meta.jsonl"), meta_rows(40))
    rows = [{"ok": True, "n": i} for i in range(20)]
    write_jsonl(str(tmp_path / "flags.jsonl"), rows)
    with pytest.raises(Exception) as error:
        run(tmp_path, tmp_path / "meta.jsonl", text_columns=[column])
    assert words is None or words in str(error.value)
    with pytest.raises(UsageError, match="column ok of .* holds booleans, not text"):
        run(tmp_path, tmp_path / "flags.jsonl", "b", text_columns=["ok"])


def test_a_json_array_file_is_still_read_through_datasets(tmp_path):
    rows = meta_rows(50)
    (tmp_path / "items.json").write_text(json.dumps(rows))
    lines, _ = run(tmp_path, tmp_path / "items.json")
    assert sorted(lines) == sorted(expected(rows, lambda r: r["title"]))


def test_json_lines_are_read_without_a_datasets_cache_copy(tmp_path):
    write_jsonl(str(tmp_path / "meta.jsonl"), meta_rows(50))
    cache = tmp_path / "hf"
    env = {**os.environ, "HF_HOME": str(cache), "HF_DATASETS_CACHE": str(cache / "datasets")}
    subprocess.run([sys.executable, "corpus/run_corpus_generation.py", "--data-files", str(tmp_path / "meta.jsonl"),
                    "--output-dir", str(tmp_path / "out"), "--no-progress"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    assert read_split(str(tmp_path / "out"), "train")


def test_read_json_lines_keeps_other_types_for_non_text_readers(tmp_path):
    write_jsonl(str(tmp_path / "meta.jsonl"), meta_rows(10))
    rows = [r for batch in read_json_lines(str(tmp_path / "meta.jsonl"), ["title", "rating_number"], SourceStats(),
                                           text=False) for r in batch]
    assert rows[3] == (meta_rows(10)[3]["title"], 13)


def test_a_lone_surrogate_escape_becomes_a_space(tmp_path):
    rows = [{"title": f"Half an emoji \\ud83d {i}"} for i in range(30)]  # json.dumps writes a lone surrogate so
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r).replace("\\\\", "\\") + "\n" for r in rows))
    lines, _ = run(tmp_path, tmp_path / "t.jsonl")
    assert sorted(lines) == sorted(f"Half an emoji {i}" for i in range(30))


def test_the_amazon_2023_hub_dataset_is_refused_with_the_command_that_reads_its_files(tmp_path):
    with pytest.raises(UsageError, match=r"is a loading script, which `datasets` no longer runs .* --data-files "
                       r"'hf://datasets/McAuley-Lab/Amazon-Reviews-2023/raw/review_categories/Toys_and_Games.jsonl' "
                       r"--text-column text --output-dir "):
        generate_corpus(CorpusConfig(output_dir=str(tmp_path / "out"), dataset="McAuley-Lab/Amazon-Reviews-2023",
                                     dataset_config="raw_review_Toys_and_Games", progress=False))
    assert not (tmp_path / "out").exists()


def test_any_script_based_hub_dataset_is_a_one_line_error_saying_why(tmp_path, monkeypatch):
    import datasets

    def load_dataset(*args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found squad_old.py")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(UsageError, match=r"'someone/squad_old' is a loading script.*--data-files 'hf://datasets/"
                       r"someone/squad_old/PATH'"):
        generate_corpus(CorpusConfig(output_dir=str(tmp_path / "out"), dataset="someone/squad_old", progress=False))


def test_a_line_nested_too_deep_for_json_loads_is_a_bad_line(tmp_path):
    rows = meta_rows(50)
    write_jsonl(str(tmp_path / "meta.jsonl"), rows, {20: b"[" * 100_000 + b"]" * 100_000})
    lines, manifest = run(tmp_path, tmp_path / "meta.jsonl")
    assert manifest["dropped"] == {"bad_json": 1} and manifest["bad_lines"][0]["line"] == 21
    assert sorted(lines) == sorted(expected(rows, lambda r: r["title"]))


def test_max_rows_counts_only_the_blocks_taken_and_stops_the_reader(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(sources, "READ_BYTES", 4096)  # many blocks: the bad line is far past the rows taken
    write_jsonl(str(tmp_path / "meta.jsonl"), meta_rows(3000), {2500: b"not json"})
    threads = threading.active_count()
    for _ in range(3):  # the same counts every time: nothing counted behind the caller's back
        _, manifest = run(tmp_path, tmp_path / "meta.jsonl", "out", max_rows=300, overwrite=True)
        assert manifest["rows_read"] == 300 and manifest["dropped"] == {} and manifest["bad_lines"] == []
    for _ in range(50):  # the reader's threads see they are no longer wanted within a few 0.1-s waits
        if threading.active_count() <= threads:
            break
        threading.Event().wait(0.1)
    assert threading.active_count() <= threads


def test_checking_json_files_for_an_array_leaves_no_thread_behind(tmp_path):
    import threading

    write_jsonl(str(tmp_path / "a.json.gz"), meta_rows(2000))
    threads = threading.active_count()
    assert not any(sources._is_json_array(str(tmp_path / "a.json.gz")) for _ in range(5))
    assert threading.active_count() == threads


def test_line_per_value_counts_rows_not_values(tmp_path):
    rows = [{"title": f"Item {i}", "features": [f"feature {i} a", f"feature {i} b"]} for i in range(200)]
    write_jsonl(str(tmp_path / "items.jsonl"), rows)
    lines, manifest = run(tmp_path, tmp_path / "items.jsonl", text_columns=["title", "features"], line_per="value")
    assert manifest["rows_read"] == 200 and len(lines) == 600


def test_a_stream_that_returns_little_at_a_time_is_read_in_full_blocks():
    class Trickle:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, n: int) -> bytes:
            part, self.data = self.data[: min(n, 10)], self.data[min(n, 10) :]
            return part

    stream = Trickle(b"x" * 1000)
    assert len(sources._read_full(stream, 300)) == 300 and len(sources._read_full(stream, 900)) == 700
