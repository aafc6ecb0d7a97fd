"""Every bad input of the three scripts: exit code 2 (usage) or 1 (runtime), one line on stderr that
names the problem and the fix, no traceback, and nothing the user already had is changed."""
import errno
import json
import os
import sys

import pytest

from conftest import run_script
from corpus import run_corpus_generation, writing
from common import run_main, write_json_atomic
from tokenizer import run_tokenizer_fitting
from training import run_fill_mask, run_training

SCRIPTS = {"corpus": run_corpus_generation.main, "tokenizer": run_tokenizer_fitting.main,
           "training": run_training.main, "fill-mask": run_fill_mask.main}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, pipeline_run):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.tsv").write_bytes(b"")
    (d / "binary.tsv").write_bytes(bytes(range(256)) * 4)
    (d / "garbage.parquet").write_bytes(b"not parquet at all")
    (d / "a_file").write_text("x")
    (d / "empty_dir").mkdir()
    (d / "binary_dir").mkdir()
    (d / "binary_dir" / "x.txt").write_bytes(b"\x00\x01\x02\xff" * 100)
    (d / "long_watch.txt").write_text("Organic cotton baby <mask>\n\n" + "soft " * 40 + "blanket <mask>\n")
    (d / "torn_job").mkdir()
    (d / "torn_job" / "run_config.json").write_text('{"identity": {"model_size": "ti')  # cut short
    (d / "not_a_tokenizer").mkdir()
    (d / "not_a_tokenizer" / "tokenizer.json").write_text("{ this is not json")
    no_mask = d / "no_mask"
    no_mask.mkdir()
    tok = json.load(open(os.path.join(pipeline_run["tokenizer"], "tokenizer.json")))
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<mask>"]
    json.dump(tok, open(no_mask / "tokenizer.json", "w"))
    cfg = json.load(open(os.path.join(pipeline_run["tokenizer"], "tokenizer_config.json")))
    cfg.pop("mask_token", None)
    json.dump(cfg, open(no_mask / "tokenizer_config.json", "w"))
    return {"dir": str(d), **{k: str(v) for k, v in pipeline_run.items() if isinstance(v, str)}}


def train_args(inputs, **override):
    args = {"--job-dir": f"{inputs['dir']}/job", "--path-to-train-set": f"{inputs['corpus']}/train",
            "--path-to-val-set": f"{inputs['corpus']}/validation", "--path-to-tokenizer": inputs["tokenizer"],
            "--model-size": "tiny", "--max-steps": "1"}
    args.update(override)
    return [x for kv in args.items() for x in kv]


CASES = [
    # script, arguments (D = scratch dir, C = corpus, T = tokenizer), exit code, words in the message
    ("corpus", ["--data-files", "D/missing.tsv", "--output-dir", "D/out"], 2, "matches no file"),
    ("corpus", ["--data-files", "D/empty.tsv", "--output-dir", "D/out"], 2, "not a tab-separated file"),
    ("corpus", ["--data-files", "D/binary.tsv", "--output-dir", "D/out"], 2, "not a tab-separated file"),
    ("corpus", ["--data-files", "D/garbage.parquet", "--output-dir", "D/out"], 1, "could not read"),
    ("corpus", ["--text-column", "nope", "--output-dir", "D/out"], 2, "its columns are"),
    ("corpus", ["--min-chars", "100000", "--output-dir", "D/out"], 1, "no sentence left"),
    ("corpus", ["--validation-sample-size", "0", "--output-dir", "D/out"], 2, "between 0 and 1"),
    ("corpus", ["--validation-sample-size", "1.5", "--output-dir", "D/out"], 2, "between 0 and 1"),
    ("corpus", ["--output-dir", "D/a_file/out"], 2, "choose a writable directory"),
    ("corpus", ["--output-dir", "C"], 2, "--overwrite"),
    ("corpus", ["--output-dir", "T", "--overwrite"], 2, "not a corpus"),
    ("tokenizer", ["--corpus-dir", "D/missing", "--output-dir", "D/tok"], 2, "does not exist"),
    ("tokenizer", ["--corpus-dir", "D/empty_dir", "--output-dir", "D/tok"], 2, "no .txt files"),
    ("tokenizer", ["--corpus-dir", "D/binary_dir", "--output-dir", "D/tok"], 2, "not UTF-8 text"),
    ("tokenizer", ["--corpus-dir", "C/train", "--output-dir", "D/tok", "--vocab-size", "100"], 2, "at least 261"),
    ("tokenizer", ["--corpus-dir", "C/train", "--output-dir", "T"], 2, "--overwrite"),
    ("training", {"--path-to-train-set": "D/missing"}, 2, "holds no .txt files"),
    ("training", {"--path-to-train-set": "D/empty_dir"}, 2, "holds no .txt files"),
    ("training", {"--path-to-val-set": "C/train"}, 2, "share files"),
    ("training", {"--path-to-tokenizer": "D/missing"}, 2, "no tokenizer.json"),
    ("training", {"--path-to-tokenizer": "D/not_a_tokenizer"}, 2, "not a readable tokenizer"),
    ("training", {"--path-to-tokenizer": "D/no_mask"}, 2, "no mask token"),
    ("training", {"--max-seq-length": "600"}, 2, "between 8 and 512"),
    ("training", {"--batch-size": "0"}, 2, "--batch-size must be at least 1"),
    ("training", {"--lr": "-0.001"}, 2, "--lr must be positive"),
    ("training", {"--mlm-probability": "1.5"}, 2, "--mlm-probability"),
    ("training", {"--mlm-probability": "0"}, 2, "--mlm-probability must be in (0, 1), got 0.0"),
    ("training", {"--mask-rule": "random"}, 2, "argument --mask-rule: invalid choice: 'random'"),
    ("training", {"--batch-size": "eight"}, 2, "argument --batch-size: invalid int value: 'eight'"),
    ("corpus", ["--output-dir", "D/out", "--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    ("training", {"--max-time": "soon"}, 2, "--max-time 'soon' is not a duration"),
    ("training", {"--seed": "-1"}, 2, "--seed must be between 0 and 4294967295"),
    ("training", {"--seed": str(2**32)}, 2, "--seed must be between 0 and 4294967295"),
    ("training", {"--language": "English"}, 2, "--language 'English' is not a list of language codes"),
    ("training", {"--watch-texts": "D/long_watch.txt", "--max-seq-length": "16"}, 2,
     "line 3 has its <mask> past --max-seq-length 16 tokens; shorten the line or raise --max-seq-length"),
    ("training", {"--accumulate-grad-batches": "0"}, 2, "--accumulate-grad-batches must be at least 1"),
    ("training", {"--decay-ratio": "2"}, 2, "--decay-ratio must be in (0, 1]"),
    ("training", {"--warmup-steps": "-1"}, 2, "--warmup-steps must be 0 or more"),
    ("training", {"--warmup-steps": "10", "--warmup-ratio": "0.1"}, 2, "not both"),
    ("training", {"--job-dir": "D/a_file/job"}, 2, "choose a writable directory"),
    ("training", {"--job-dir": "J", "--num-layers": "3"}, 2, "holds a run with a different"),
    ("training", {"--job-dir": "D/torn_job"}, 2, "run_config.json (Unterminated string"),
    ("fill-mask", ["--model-dir", "D/missing", "a <mask>"], 2, "not an exported model"),
    ("fill-mask", ["--checkpoint", "D/a_file", "a <mask>", "--path-to-tokenizer", "T"], 2, "not a checkpoint"),
]


def snapshot(root):
    return sorted((p, os.path.getsize(os.path.join(p, f)), os.path.getmtime(os.path.join(p, f)))
                  for p, _, files in os.walk(root) for f in files)


@pytest.mark.parametrize("script, args, code, words", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_bad_input(inputs, capsys, script, args, code, words):
    if isinstance(args, dict):
        args = train_args(inputs, **args)
    swap = {"D": inputs["dir"], "C": inputs["corpus"], "T": inputs["tokenizer"], "J": inputs["job"]}
    args = [swap[a[0]] + a[1:] if a[:1] in swap and (len(a) == 1 or a[1] == "/") else a for a in args]
    if script in ("corpus", "tokenizer"):
        args.append("--no-progress")  # a progress bar may rightly precede a runtime error; here we read the error
    before = {k: snapshot(v) for k, v in swap.items()}
    assert run_main(lambda: SCRIPTS[script](args)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and err[0].startswith("error: "), err
    assert {k: snapshot(v) for k, v in swap.items()} == before


def test_disk_full_while_writing_shards_keeps_the_old_corpus(tmp_path, capsys, monkeypatch, sample_tsv):
    out = tmp_path / "corpus"
    argv = ["--data-files", sample_tsv, "--output-dir", str(out), "--no-progress"]
    assert run_main(lambda: run_corpus_generation.main(argv)) == 0
    before = snapshot(str(out))
    real_write, written = writing.ShardWriter.write_lines, []

    def write_until_full(self, lines):
        if len(written) > 100:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.directory)
        written.extend(lines)
        real_write(self, lines)

    monkeypatch.setattr(writing.ShardWriter, "write_lines", write_until_full)
    capsys.readouterr()
    assert run_main(lambda: run_corpus_generation.main([*argv, "--overwrite"])) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "free disk space" in err[0]
    assert snapshot(str(out)) == before and os.listdir(tmp_path) == ["corpus"]
    written.clear()
    fresh = tmp_path / "fresh"
    assert run_main(lambda: run_corpus_generation.main(["--data-files", sample_tsv, "--output-dir", str(fresh),
                                                         "--no-progress"])) == 1
    assert not fresh.exists() and sorted(os.listdir(tmp_path)) == ["corpus"]  # no shard, no manifest, no debris


def test_a_json_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "run_config.json"
    undecodable = os.fsdecode(b"/data/caf\xe9")  # a path in Latin-1 on a UTF-8 system: a lone surrogate
    write_json_atomic(str(path), {"train_path": undecodable})
    assert json.loads(path.read_text(encoding="utf-8")) == {"train_path": undecodable}
    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"train_path": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"train_path": undecodable}
    assert os.listdir(tmp_path) == ["run_config.json"]


def test_a_split_that_is_not_utf8_is_named_with_its_line_and_byte(tmp_path, pipeline_run):
    bad = tmp_path / "foreign"
    bad.mkdir()
    (bad / "a.txt").write_bytes(b"soft blanket\n" * 1000 + b"pink \xff bottle\n")
    result = run_script("training/run_training.py", "--job-dir", str(tmp_path / "job"), "--path-to-train-set",
                        str(bad), "--path-to-val-set", f"{pipeline_run['corpus']}/validation", "--path-to-tokenizer",
                        pipeline_run["tokenizer"], "--model-size", "tiny", "--max-steps", "1", "--accelerator", "cpu",
                        "--no-progress", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert f"{str(bad / 'a.txt')!r} is not UTF-8 text (line 1001, byte 13005)" in errors[0]
    assert "step 1" in errors[0]
    assert not [f for f in os.listdir(tmp_path / "job" / "cache") if f.startswith(".encoding-")]  # no debris


def test_a_tsv_saved_with_a_byte_order_mark_is_read(tmp_path, capsys, sample_tsv):
    import gzip

    from corpus.sources import SourceStats, read_amazon_tsv

    data = gzip.open(sample_tsv).read()
    (tmp_path / "bom.tsv").write_bytes(b"\xef\xbb\xbf" + data)  # as Excel and Notepad save UTF-8
    with gzip.open(tmp_path / "bom.tsv.gz", "wb") as f:
        f.write(b"\xef\xbb\xbf" + data)
    rows = next(read_amazon_tsv(str(tmp_path / "bom.tsv"), ["marketplace", "product_title"], SourceStats()))
    assert rows[0][0] == "US"
    corpora = {}
    for name, path in (("plain", sample_tsv), ("bom", tmp_path / "bom.tsv"), ("bom_gz", tmp_path / "bom.tsv.gz")):
        out = tmp_path / name
        argv = ["--data-files", str(path), "--output-dir", str(out), "--no-progress"]
        assert run_main(lambda: run_corpus_generation.main(argv)) == 0, capsys.readouterr().err
        corpora[name] = [open(os.path.join(root, f), "rb").read() for root, _, files in sorted(os.walk(out))
                         for f in sorted(files) if f.endswith(".txt")]
    assert corpora["plain"] and corpora["bom"] == corpora["plain"] and corpora["bom_gz"] == corpora["plain"]


def test_a_watched_mask_past_128_tokens_is_shown_when_max_seq_length_allows(tmp_path, tokenizer):
    from types import SimpleNamespace

    from transformers import RobertaForMaskedLM

    from common import UsageError
    from training.model import build_config
    from training.watch import FillMaskSamples, read_watch_texts

    text = "soft " * 150 + "blanket <mask>"  # the <mask> lands at about token 152
    (tmp_path / "watch.txt").write_text(text + "\n")
    assert read_watch_texts(str(tmp_path / "watch.txt"), tokenizer, 256) == [text]
    with pytest.raises(UsageError, match="line 1 has its <mask> past --max-seq-length 128"):
        read_watch_texts(str(tmp_path / "watch.txt"), tokenizer, 128)
    watch = FillMaskSamples(tokenizer, [text])
    written = []
    data = SimpleNamespace(max_seq_length=256, val_set=SimpleNamespace(sentences=SimpleNamespace(split=None)))
    trainer = SimpleNamespace(is_global_zero=True, datamodule=data, global_step=0,
                              logger=SimpleNamespace(experiment=SimpleNamespace(add_text=lambda *a, **k: written.append(a))))
    model = RobertaForMaskedLM(build_config(len(tokenizer), "tiny", 32, 1, 2))
    watch.on_validation_end(trainer, SimpleNamespace(model=model))
    assert len(written) == 1 and len(written[0][1].splitlines()) == 3  # header, rule, the watched text


def test_plotting_without_matplotlib_says_how_to_install_it(capsys, monkeypatch, pipeline_run):
    from training import plot_learning_curves

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: importing it raises ImportError
    assert run_main(lambda: plot_learning_curves.main(["--job-dir", pipeline_run["job"]])) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pip install matplotlib" in err[0], err
