"""Every bad input of the three scripts: exit code 2 (usage) or 1 (runtime), one line on stderr that
names the problem and the fix, no traceback, and nothing the user already had is changed."""
import errno
import json
import os

import pytest

from corpus import run_corpus_generation, writing
from common import run_main
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
    ("training", {"--max-time": "soon"}, 2, "--max-time 'soon' is not a duration"),
    ("training", {"--accumulate-grad-batches": "0"}, 2, "--accumulate-grad-batches must be at least 1"),
    ("training", {"--decay-ratio": "2"}, 2, "--decay-ratio must be in (0, 1]"),
    ("training", {"--warmup-steps": "-1"}, 2, "--warmup-steps must be 0 or more"),
    ("training", {"--warmup-steps": "10", "--warmup-ratio": "0.1"}, 2, "not both"),
    ("training", {"--job-dir": "D/a_file/job"}, 2, "choose a writable directory"),
    ("training", {"--job-dir": "J", "--num-layers": "3"}, 2, "holds a run with a different"),
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
    real_write, written = writing.ShardWriter.write, []

    def write_until_full(self, line):
        if len(written) > 100:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.directory)
        written.append(line)
        real_write(self, line)

    monkeypatch.setattr(writing.ShardWriter, "write", write_until_full)
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
