import gzip
import hashlib
import json
import os
import random
import tempfile
import threading

import numpy as np
import pytest

from common import UsageError
from conftest import run_script
from corpus.pipeline import CorpusConfig, generate_corpus
from corpus.sample_data import SAMPLE_PATH, sample_rows, write_sample_reviews
from corpus.splitting import is_validation, sentence_hash


def read_split(corpus: str, split: str) -> list[str]:
    lines = []
    for name in sorted(os.listdir(os.path.join(corpus, split))):
        with open(os.path.join(corpus, split, name), encoding="utf-8") as f:
            lines.extend(f.read().splitlines())
    return lines


def corpus(tmp_path, source, name="out", **kwargs) -> tuple[str, dict]:
    out = str(tmp_path / name)
    manifest = generate_corpus(CorpusConfig(output_dir=out, data_files=[source], progress=False, **kwargs))
    return out, manifest


def test_bundled_sample_is_what_the_generator_writes(tmp_path):
    path = tmp_path / "again.tsv.gz"
    write_sample_reviews(str(path))
    assert path.read_bytes() == open(SAMPLE_PATH, "rb").read()


def test_split_has_no_leakage_no_duplicates_and_is_stable(tmp_path, sample_tsv):
    out1, manifest = corpus(tmp_path, sample_tsv, "a")
    train, val = read_split(out1, "train"), read_split(out1, "validation")
    assert not set(train) & set(val)
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert manifest["rows_kept"] == len(train) + len(val)
    out2, _ = corpus(tmp_path, sample_tsv, "b")
    assert read_split(out2, "train") == train and read_split(out2, "validation") == val


def test_split_depends_on_the_sentence_only():
    # The same sentence lands on the same side whatever else is in the corpus.
    sentences = [f"product {i}" for i in range(5000)]
    sides = [is_validation(sentence_hash(s, 42), 0.1) for s in sentences]
    assert sides == [is_validation(sentence_hash(s, 42), 0.1) for s in reversed(sentences)][::-1]
    assert 0.08 < sum(sides) / len(sides) < 0.12


def test_step_1_splits_by_sentence_whatever_the_file_order_position_and_processes(tmp_path):
    titles = [f"Organic Cotton Swaddle {i} &amp; Hat" for i in range(3000)]
    forward = tmp_path / "forward.jsonl"
    forward.write_text("".join(json.dumps({"title": t}) + "\n" for t in titles))
    # other sentences first, then the same ones backwards: every sentence moves to another position
    shifted = tmp_path / "shifted.jsonl"
    shifted.write_text("".join(json.dumps({"title": t}) + "\n" for t in [f"Other {i}" for i in range(777)]
                               + titles[::-1]))
    sides = []
    for name, source, extra in (("a", forward, {}), ("b", shifted, {}), ("c", forward, {"num_proc": 2})):
        out, _ = corpus(tmp_path, str(source), name, text_columns=["title"], **extra)
        val = set(read_split(out, "validation"))
        sides.append({t: t in val for t in read_split(out, "train") + read_split(out, "validation")
                      if t.startswith("Organic")})
    assert len(sides[0]) == 3000 and sides[0] == sides[1] == sides[2]
    assert 0.08 < sum(sides[0].values()) / 3000 < 0.12


def test_last_partial_shard_is_written_and_manifest_counts(tmp_path, sample_tsv):
    out, manifest = corpus(tmp_path, sample_tsv, lines_per_shard=50)
    shards = manifest["splits"]["train"]["shards"]
    assert all(s["lines"] == 50 for s in shards[:-1]) and 0 < shards[-1]["lines"] <= 50
    assert sum(s["lines"] for s in shards) == len(read_split(out, "train")) == manifest["splits"]["train"]["lines"]
    for split in ("train", "validation"):  # what the manifest says of each shard is what is on disk
        for shard in manifest["splits"][split]["shards"]:
            data = open(os.path.join(out, split, shard["file"]), "rb").read()
            assert (shard["lines"], shard["bytes"], shard["sha256"]) == (data.count(b"\n"), len(data),
                                                                         hashlib.sha256(data).hexdigest())
    on_disk = json.load(open(os.path.join(out, "manifest.json")))
    assert on_disk["rows_read"] == manifest["rows_read"]
    assert on_disk["duplicates_removed"] > 0  # titles repeat across reviews


def test_amazon_tsv_quirks(tmp_path):
    header = "\t".join(sample_rows(1)[0].decode().split("\t"))
    fields = lambda title: "\t".join(["US", "1", "R1", "B1", "1", title, "Baby", "5", "0", "0", "N", "Y", "h", "b", "2015-01-01"])
    raw = "\n".join([
        header,
        fields('Doll 12" Tall &amp; Soft'),  # bare quote and an entity
        fields('"Best" Bottle'),  # a field starting with a quote is not CSV-quoted
        fields("Too\tmany"),  # malformed: an extra field
        "US\t2\tR2",  # malformed: too few fields
        fields("  Spaced    out  "),
        fields('Doll 12" Tall & Soft'),  # duplicate once normalised
    ]).encode() + b"\n" + fields("Bad \xff byte").encode("latin-1") + b"\n"
    path = tmp_path / "quirks.tsv.gz"
    path.write_bytes(gzip.compress(raw))
    out, manifest = corpus(tmp_path, str(path), validation_size=0.5)
    kept = sorted(read_split(out, "train") + read_split(out, "validation"))
    assert kept == sorted(['Doll 12" Tall & Soft', '"Best" Bottle', "Spaced out"])
    assert manifest["dropped"] == {"malformed_row": 2, "bad_utf8": 1}
    assert manifest["duplicates_removed"] == 1 and manifest["rows_read"] == 7


def test_several_text_columns_and_other_formats(tmp_path):
    csv = tmp_path / "items.csv"
    csv.write_text('title,brand\n"Soft, warm blanket",Nestling\n"Bottle ""9 oz""",Peapod\n,Nobody\n')
    out, manifest = corpus(tmp_path, str(csv), text_columns=["title", "brand"], validation_size=0.5)
    kept = sorted(read_split(out, "train") + read_split(out, "validation"))
    assert kept == ["Bottle \"9 oz\" Peapod", "Nobody", "Soft, warm blanket Nestling"]
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"title": "A &amp; B"}\n{"title": "C"}\n{"title": null}\n')
    out, manifest = corpus(tmp_path, str(jsonl), "j", validation_size=0.5)
    assert sorted(read_split(out, "train") + read_split(out, "validation")) == ["A & B", "C"]
    assert manifest["dropped"] == {"empty": 1}


def test_refuses_to_overwrite_and_replaces_only_with_flag(tmp_path, sample_tsv):
    out, _ = corpus(tmp_path, sample_tsv)
    before = read_split(out, "train")
    result = run_script("corpus/run_corpus_generation.py", "--data-files", sample_tsv, "--output-dir", out, check=False)
    assert result.returncode == 2 and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert read_split(out, "train") == before
    run_script("corpus/run_corpus_generation.py", "--data-files", sample_tsv, "--output-dir", out, "--overwrite",
               "--lowercase", "--no-progress")
    assert read_split(out, "train") != before and all(l == l.lower() for l in read_split(out, "train"))
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]


def test_streaming_parallel_and_plain_runs_write_the_same_corpus(tmp_path):
    rows = [{"title": f"Item &amp; {i % 150}", "brand": f"B{i % 3}"} for i in range(600)] + [{"title": None, "brand": "x"}]
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    outputs = []
    for name, extra in (("plain", {}), ("streaming", {"streaming": True}), ("parallel", {"num_proc": 2})):
        out, manifest = corpus(tmp_path, str(jsonl), name, text_columns=["title", "brand"], **extra)
        outputs.append((read_split(out, "train"), read_split(out, "validation"), manifest["duplicates_removed"]))
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0][0]) + len(outputs[0][1]) == 151  # 150 titles x brands pattern + "x"


def test_parquet_several_columns_and_filters(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    titles = ["A", "Very long title " * 20, "Bottle", "Bottle"] + [f"Soft blanket {i}" for i in range(20)]
    brands = ["P", "Q", "R", "R"] + ["N"] * 20
    pq.write_table(pa.table({"title": titles, "brand": brands}), tmp_path / "items.parquet")
    out, manifest = corpus(tmp_path, str(tmp_path / "items.parquet"), text_columns=["title", "brand"],
                           validation_size=0.5, min_chars=4, max_chars=100)
    kept = sorted(read_split(out, "train") + read_split(out, "validation"))
    assert kept == sorted(["Bottle R"] + [f"Soft blanket {i} N" for i in range(20)])
    assert manifest["dropped"] == {"too_long": 1, "too_short": 1} and manifest["duplicates_removed"] == 1
    _, limited = corpus(tmp_path, str(tmp_path / "items.parquet"), "limited", text_columns=["title"],
                        validation_size=0.5, max_rows=2)
    assert limited["rows_read"] == 2


def test_unreachable_hub_dataset_says_how_to_use_local_files(tmp_path):
    result = run_script("corpus/run_corpus_generation.py", "--dataset", "someone/no-such-dataset", "--output-dir",
                        str(tmp_path / "out"), "--no-progress", check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1 and "--data-files" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_several_tsv_files_in_parallel_match_one_process(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"part{i}.tsv.gz"
        write_sample_reviews(str(path), n_products=120, seed=i)
        paths.append(str(path))
    runs = []
    for name, num_proc in (("one", 1), ("three", 3)):
        out = str(tmp_path / name)
        manifest = generate_corpus(CorpusConfig(output_dir=out, data_files=paths, num_proc=num_proc, progress=False))
        runs.append((read_split(out, "train"), read_split(out, "validation"), manifest["rows_read"],
                     manifest["duplicates_removed"], manifest["dropped"]))
        assert sorted(os.listdir(out)) == ["manifest.json", "train", "validation"]  # the workers' spills are gone
    assert runs[0] == runs[1]


def test_duplicates_are_counted_before_and_after_normalisation(tmp_path):
    # raw repeats (dropped before normalising) and texts that only normalise alike (dropped after)
    rows = ["Baby &amp; Me", "Baby & Me", "Baby  &  Me", "Baby &amp; Me", "Other", "Other"]
    rows += [f"Item {i}" for i in range(100)]  # enough sentences for a validation split
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"title": t}) + "\n" for t in rows))
    out, manifest = corpus(tmp_path, str(source), text_columns=["title"])
    kept = read_split(out, "train") + read_split(out, "validation")
    assert sorted(t for t in kept if not t.startswith("Item")) == ["Baby & Me", "Other"]
    assert manifest["duplicates_removed"] == 4 and manifest["rows_kept"] == 102 and manifest["rows_read"] == 106


def test_repeat_filter_forgets_but_the_deduplicator_does_not(tmp_path):
    from corpus.splitting import RepeatFilter

    small = RepeatFilter(capacity=3)
    assert small.fresh(["a", "b", "a", "", ""]) == ["a", "b", "", ""] and small.repeats == 1
    small.fresh(["c", "d"])  # over capacity: forgets on the next batch
    assert small.fresh(["a"]) == ["a"]


def reference_tsv_rows(raw: bytes, column: str) -> tuple[list[str], dict]:
    """The TSV rule, line by line: exactly the header's number of fields, the field valid UTF-8."""
    lines = raw.split(b"\n")
    header = lines[0].rstrip(b"\r").decode().split("\t")
    kept, dropped = [], {}
    for line in lines[1:-1] if raw.endswith(b"\n") else lines[1:]:
        fields = line.rstrip(b"\r\n").split(b"\t")
        if len(fields) != len(header):
            dropped["malformed_row"] = dropped.get("malformed_row", 0) + 1
            continue
        try:
            kept.append(fields[header.index(column)].decode("utf-8"))
        except UnicodeDecodeError:
            dropped["bad_utf8"] = dropped.get("bad_utf8", 0) + 1
    return kept, dropped


@pytest.mark.parametrize("read_bytes", [7, 4096, 1 << 20])
@pytest.mark.parametrize("column", ["product_title", "review_date"])
def test_tsv_reader_cuts_lines_across_blocks_and_gzip_members(monkeypatch, read_bytes, column):
    from corpus import sources

    rng = random.Random(read_bytes)
    header = sample_rows(1)[0]
    rows = []
    for i in range(3000):
        fields = [b"US", b"1", b"R1", b"B1", b"1", f"Title {i} \u00e9\"x".encode(), b"Baby", b"5", b"0", b"0", b"N",
                  b"Y", b"h", b"body " * rng.randrange(200), f"2015-01-{i % 28 + 1:02d}".encode()]
        if i % 97 == 0:
            fields = fields[:rng.randrange(1, 15)]  # malformed
        if i % 89 == 0:
            fields[min(5, len(fields) - 1)] += b"\xff"  # bad UTF-8
        rows.append(b"\t".join(fields) + (b"\r" if i % 5 == 0 else b""))
    raw = header + b"\n" + b"\n".join(rows) + b"\n\n"  # an empty last line is a malformed row
    data = gzip.compress(raw[: len(raw) // 2]) + gzip.compress(raw[len(raw) // 2 :])  # two gzip members
    expected, dropped = reference_tsv_rows(raw, column)
    monkeypatch.setattr(sources, "READ_BYTES", read_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in (("a.tsv.gz", data), ("b.tsv", raw)):
            path = os.path.join(tmp, name)
            open(path, "wb").write(content)
            stats = sources.SourceStats()
            got = [v for batch in sources.read_amazon_tsv(path, [column], stats) for (v,) in batch]
            assert got == expected and stats.dropped == dropped and stats.rows_read == len(rows) + 1
            assert dropped["malformed_row"] > 20 and (column == "review_date" or dropped["bad_utf8"] > 20)


def test_a_truncated_gzip_file_is_a_one_line_error(tmp_path, sample_tsv):
    data = open(sample_tsv, "rb").read()
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(data[: len(data) // 2])
    result = run_script("corpus/run_corpus_generation.py", "--data-files", str(path), "--output-dir",
                        str(tmp_path / "out"), "--no-progress", check=False)
    assert result.returncode == 2 and "truncated" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def spilled(tmp_path, batches, **kwargs):
    from corpus.dedup import SentenceSpill

    spill = SentenceSpill(str(tmp_path / "spill"), **kwargs)
    for batch in batches:
        spill.add([f"s{h}" for h in batch.tolist()], batch)
    return spill


@pytest.mark.parametrize("recent", [1, 50, 1 << 20])  # repeats left to the sort, or mostly caught before it
def test_spill_keeps_first_occurrences_in_order(tmp_path, monkeypatch, recent):
    import corpus.dedup

    monkeypatch.setattr(corpus.dedup, "RANGE_SENTENCES", 500)  # many ranges and chunks
    monkeypatch.setattr(corpus.dedup, "READ_BYTES", 333)  # lines cut across read blocks
    rng = np.random.default_rng(0)
    # small values repeat within and across batches; large ones spread over the whole hash space; one
    # hash comes back in every batch (all its copies in one range)
    batches = [np.concatenate([rng.integers(0, 3000, int(rng.integers(0, 200))), [7] * 20,
                               rng.integers(0, 2**64 - 1, 30, dtype=np.uint64, endpoint=True)]).astype(np.uint64)
               for _ in range(100)]
    spill = spilled(tmp_path, batches, recent=recent)
    keep, seen, expected = spill.first_occurrences(), set(), []
    for h in np.concatenate(batches).tolist():
        if h not in seen:
            seen.add(h)
            expected.append(h)
    kept, positions = [], []
    for lines, hashes, position in spill.replay():
        assert [line.decode() for line in lines] == [f"s{h}" for h in hashes.tolist()]
        mask = keep[position : position + len(lines)]
        kept.extend(hashes[mask].tolist())
        positions.append((position, len(lines)))
    assert kept == expected and len(positions) > 10
    assert [p for p, _ in positions] == list(np.cumsum([0] + [n for _, n in positions[:-1]]))
    assert spill.repeats + spill.count - keep.sum() == sum(map(len, batches)) - len(seen)
    spill.remove()
    assert not (tmp_path / "spill").exists()


LOW_ULIMIT_SPILL = """
import os, resource, sys
import numpy as np
import corpus.dedup
from corpus.dedup import SentenceSpill

corpus.dedup.RANGE_SENTENCES = 50
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))  # ulimit -n 64
spill = SentenceSpill(sys.argv[1], recent=1)  # repeats left to the sort
for batch in np.random.default_rng(2).integers(0, 8_000, (200, 100)).astype(np.uint64):
    spill.add([str(h) for h in batch.tolist()], batch)
keep = spill.first_occurrences()
spilled = np.fromfile(os.path.join(sys.argv[1], "hashes.u64"), dtype="<u8")
expected = np.zeros(len(spilled), dtype=bool)
expected[np.unique(spilled, return_index=True)[1]] = True
assert (keep == expected).all() and len(spilled) > 4 * 64 * corpus.dedup.RANGE_SENTENCES, len(spilled)
"""


def test_spill_keeps_few_files_open_whatever_the_number_of_ranges(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    # ~20,000 sentences spilled in ranges of 50: ~400 range files, many more than the 64 the process may open
    result = subprocess.run([sys.executable, "-c", LOW_ULIMIT_SPILL, str(tmp_path / "spill")], cwd=REPO,
                            env=os.environ | {"PYTHONPATH": REPO}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def test_spill_memory_is_a_byte_a_sentence_whatever_the_corpus(tmp_path, monkeypatch):
    import tracemalloc

    import corpus.dedup

    monkeypatch.setattr(corpus.dedup, "RANGE_SENTENCES", 1 << 16)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 2**64 - 1, 10_000, dtype=np.uint64, endpoint=True) for _ in range(40)]
    tracemalloc.start()
    try:
        spill = spilled(tmp_path, batches, recent=1 << 15)
        keep = spill.first_occurrences()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert keep.sum() == 400_000 and spill.count == 400_000
    # a window of recent hashes (2 x 8 bytes each while it grows), the mask (1 byte a sentence) and one range's pairs and sort (~60 bytes each): holding every hash
    # (8 bytes a sentence) or every pair (16) would not fit
    assert peak <= 16 * (1 << 15) + 400_000 + 60 * (1 << 16) + 500_000, peak


def test_validation_mask_is_is_validation_at_the_boundary():
    from corpus.splitting import is_validation, sentence_hash, sentence_hashes, validation_mask

    for size in (0.1, 0.5, 1 / 3, 1e-9):
        edge = int(size * 2**64)
        hashes = np.array([0, edge - 1, edge, edge + 1, 2**64 - 1], dtype=np.uint64)
        assert validation_mask(hashes, size).tolist() == [is_validation(int(h), size) for h in hashes]
    sentences = ["a", "Baby & Me", "é" * 300, ""]
    assert sentence_hashes(sentences, -7).tolist() == [sentence_hash(s, -7) for s in sentences]


def test_corpus_is_the_line_by_line_rule(tmp_path):
    """Batched normalising, hashing, dedup and writing give exactly what one sentence at a time gives."""
    from corpus.normalise import normalise_text
    from corpus.splitting import is_validation, sentence_hash

    rng = random.Random(5)
    words = ["Baby", "&amp;", "Me", "<br />", "Café", "ｆｕｌｌ", "12&#34;", "\u200b", "  ", "Hat", "Σ", "x"]
    rows = [" ".join(rng.choice(words) for _ in range(rng.randrange(0, 6))) for _ in range(30_000)]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"title": t}) + "\n" for t in rows))
    out, manifest = corpus(tmp_path, str(source), text_columns=["title"], min_chars=3, max_chars=30,
                           lowercase=True, lines_per_shard=700)
    seen, expected = set(), {"train": [], "validation": []}
    for row in rows:
        s = normalise_text(row, lowercase=True)
        if 3 <= len(s) <= 30 and s not in seen:
            seen.add(s)
            expected["validation" if is_validation(sentence_hash(s, 42), 0.1) else "train"].append(s)
    assert read_split(out, "train") == expected["train"] and read_split(out, "validation") == expected["validation"]
    assert manifest["rows_kept"] == len(seen) and manifest["rows_read"] == len(rows)


def test_text_files_are_read_line_by_line_with_bad_bytes_skipped(tmp_path):
    lines = [f"Soft blanket {i} &amp; hat" for i in range(3000)]
    raw = ("\r\n".join(lines[:1000]) + "\r\n").encode() + b"bad \xff line\n" + "\n".join(lines[1000:]).encode()
    (tmp_path / "a.txt").write_bytes(raw)  # CRLF, a line of bad UTF-8, no newline at the end
    with gzip.open(tmp_path / "b.txt.gz", "wb") as f:
        f.write(raw)
    expected = [t.replace("&amp;", "&") for t in lines]
    for name in ("a.txt", "b.txt.gz"):
        out, manifest = corpus(tmp_path, str(tmp_path / name), name.replace(".", "_"))
        assert sorted(read_split(out, "train") + read_split(out, "validation")) == sorted(expected)
        assert manifest["rows_read"] == 3001 and manifest["dropped"] == {"bad_utf8": 1}
    with pytest.raises(UsageError, match="column title not in"):
        corpus(tmp_path, str(tmp_path / "a.txt"), "c", text_columns=["title"])


def test_the_pool_reads_only_a_few_batches_ahead():
    from multiprocessing import Pool

    from corpus.pipeline import _imap_ahead

    pulled = []

    def batches():
        for i in range(1000):
            pulled.append(i)
            yield i

    with Pool(2) as pool:
        results = _imap_ahead(pool, abs, batches(), 4)
        assert next(results) == 0
        assert len(pulled) <= 5  # Pool.imap would queue all 1,000 (the whole file, on a real input)
        assert list(results) == list(range(1, 1000))


@pytest.mark.parametrize("read_bytes", [1, 2, 5, 1 << 20])
def test_text_lines_end_as_in_text_mode_across_blocks(tmp_path, monkeypatch, read_bytes):
    """"\\n", "\\r\\n" and a lone "\\r" end a line, as in Python's text mode (what `datasets` read with)."""
    import corpus.sources
    from corpus.sources import SourceStats, read_text_lines

    monkeypatch.setattr(corpus.sources, "READ_BYTES", read_bytes)
    rng = random.Random(read_bytes)
    for trial in range(20):
        raw = "".join(rng.choice(["ab", "é", "\r", "\n", "\r\n", " "]) for _ in range(rng.randrange(0, 40)))
        path = tmp_path / f"t{trial}.txt"
        path.write_bytes(raw.encode())
        with open(path, encoding="utf-8") as f:
            expected = f.read().split("\n")
        expected = expected[:-1] if expected[-1] == "" else expected
        got = [line for batch in read_text_lines(str(path), None, SourceStats()) for (line,) in batch]
        assert got == expected, repr(raw)


def test_a_utf16_text_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "u.txt"
    path.write_text("Soft blanket\nPink bottle\n", encoding="utf-16")
    with pytest.raises(UsageError, match="not UTF-8 text.*NUL"):
        corpus(tmp_path, str(path))
    assert sorted(os.listdir(tmp_path)) == ["u.txt"]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_file_name_with_glob_characters_is_read_as_itself(tmp_path, num_proc):
    """Paths are globbed once: a worker given 'a[1].tsv' reads that file, not 'a1.tsv' (which [1] would match)."""
    header = sample_rows(1)[0].decode()
    for name, title in (("a1.tsv", "Plain name title"), ("a[1].tsv", "Bracketed name title"), ("b*.tsv", "Star")):
        fields = ["US", "1", "R1", "B1", "1", title, "Baby", "5", "0", "0", "N", "Y", "h", "body", "2015-01-01"]
        (tmp_path / name).write_text(header + "\n" + "\t".join(fields) + "\n")
    out = str(tmp_path / "out")
    generate_corpus(CorpusConfig(output_dir=out, data_files=[str(tmp_path / "*.tsv")], num_proc=num_proc,
                                 validation_size=0.5, progress=False))
    assert sorted(read_split(out, "train") + read_split(out, "validation")) == \
        ["Bracketed name title", "Plain name title", "Star"]


@pytest.mark.parametrize("error", [MemoryError("no memory"), LookupError("unknown codec"), OSError(5, "I/O error")])
def test_every_error_of_the_read_ahead_thread_reaches_the_reader(tmp_path, monkeypatch, error):
    """An error the thread did not expect (MemoryError, a codec error) once ended it silently and the reader waited
    forever; each now reaches the reader, in order after the blocks read before it."""
    from corpus import sources

    def failing(path, chunk_bytes):
        yield b"first line\n"
        raise error

    monkeypatch.setattr(sources, "_decompressed", failing)
    (tmp_path / "a.txt").write_text("unused\n")
    seen, raised = [], []

    def read() -> None:
        try:
            for batch in sources.read_text_lines(str(tmp_path / "a.txt"), None, sources.SourceStats()):
                seen.extend(batch)
        except BaseException as e:
            raised.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "the reader waits forever for a thread that died"
    assert seen == [("first line",)] and isinstance(raised[0], (type(error), sources.PipelineError))


def test_gzip_members_padded_with_nul_bytes_are_read_whole(tmp_path):
    """Some tools pad a gzip file with NUL bytes after a member: the reader skips them, as gzip(1) does."""
    from corpus import sources

    lines = [f"line {i}" for i in range(20_000)]
    data = gzip.compress("\n".join(lines[:12_000]).encode() + b"\n") + b"\0" * 512 + \
        gzip.compress("\n".join(lines[12_000:]).encode() + b"\n") + b"\0" * 4096
    (tmp_path / "padded.txt.gz").write_bytes(data)
    got = [line for batch in sources.read_text_lines(str(tmp_path / "padded.txt.gz"), None, sources.SourceStats())
           for (line,) in batch]
    assert got == lines
    (tmp_path / "garbage.txt.gz").write_bytes(gzip.compress(b"a\n") + b"not gzip at all")
    with pytest.raises(UsageError, match="is not a readable gzip"):
        list(sources.read_text_lines(str(tmp_path / "garbage.txt.gz"), None, sources.SourceStats()))
