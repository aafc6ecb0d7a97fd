import json
import os

import pytest
from transformers import AutoTokenizer

from common import UsageError
from conftest import run_in_process, run_script
from tokenizer.fitting import FIT_OVERHEAD, MEMORY_PER_TEXT_BYTE, LineSample, count_lines
from tokenizer.memory import parse_memory_budget

FIT = "tokenizer/run_tokenizer_fitting.py"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    (root / "train").mkdir()
    (root / "validation").mkdir()
    titles = [f"Nestling Organic Cotton Swaddle Blanket, Pack of {i % 7}, 12\" Tall" for i in range(300)]
    (root / "train" / "corpus_chunk_00000.txt").write_text("\n".join(titles) + "\n")
    (root / "validation" / "corpus_chunk_00000.txt").write_text("Petit Bébé Bottle 9 oz ™\nSoft <b>bib</b>\n")
    run_script("tokenizer/run_tokenizer_fitting.py", "--corpus-dir", str(root / "train"), "--output-dir",
               str(root / "tok"), "--vocab-size", "400", "--no-progress")
    return root


def test_special_token_ids_and_round_trip(fitted):
    tok = AutoTokenizer.from_pretrained(str(fitted / "tok"))
    assert [tok.convert_tokens_to_ids(t) for t in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]] == [0, 1, 2, 3, 4]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 4)
    text = 'Petit Bébé "Bottle" 9 oz ™ 😀'
    ids = tok(text)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2  # RoBERTa post-processing: <s> ... </s>
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte level: nothing is unknown
    masked = tok("Organic <mask> Blanket")["input_ids"]
    assert tok.mask_token_id in masked and len(tok.vocab) <= 400
    # <mask> takes the space before it, as RoBERTa's does: the word it stands for is " word", not a lone " "
    words = [tok(w, add_special_tokens=False)["input_ids"] for w in ("Organic", " Blanket")]
    assert masked == [0, *words[0], tok.mask_token_id, *words[1], 2]


def test_report_is_saved(fitted):
    report = json.load(open(fitted / "tok" / "tokenizer_report.json"))
    assert report["validation_lines"] == 2 and report["round_trip_ok"] == 2
    assert report["bytes_per_token"] > 1 and report["vocab_size"] <= 400
    # the default budget (half the machine's memory) holds this corpus: every line is used
    size = (fitted / "train" / "corpus_chunk_00000.txt").stat().st_size
    assert (report["corpus_lines"], report["corpus_bytes"]) == (300, size)
    assert (report["fitted_lines"], report["fitted_bytes"]) == (300, size)
    assert report["sampled"] is False and report["sample_reason"] is None
    assert report["memory_budget_bytes"] > report["estimated_full_fit_bytes"] > size


def test_refuses_to_overwrite(fitted):
    result = run_script("tokenizer/run_tokenizer_fitting.py", "--corpus-dir", str(fitted / "train"),
                        "--output-dir", str(fitted / "tok"), check=False)
    assert result.returncode == 2 and "--overwrite" in result.stderr


def marked_corpus(directory, files: int = 4, lines: int = 1000) -> list[str]:
    """Shards whose lines name their file and number, all of one length."""
    directory.mkdir(exist_ok=True)
    paths = [directory / f"corpus_chunk_{k:05d}.txt" for k in range(files)]
    for k, path in enumerate(paths):
        path.write_text("".join(f"file{k} line{i:04d} soft cotton blanket\n" for i in range(lines)))
    return [str(p) for p in paths]


def test_the_sample_is_uniform_over_every_file_and_seeded(tmp_path):
    files = marked_corpus(tmp_path / "c")
    sample = LineSample(files, 400, count_lines(files), seed=1)
    picked = list(sample)
    assert len(picked) == sample.lines == 400 and sample.bytes == sum(len(x) + 1 for x in picked)
    assert picked == sorted(picked)  # read in corpus order, each line at most once
    per_file = [sum(x.startswith(f"file{k} ") for x in picked) for k in range(4)]
    assert all(70 <= n <= 130 for n in per_file), per_file  # ~100 each (sd 8)
    numbers = [int(x.split()[1][4:]) for x in picked]
    assert min(numbers) < 50 and max(numbers) >= 950  # from the start and the end of the files
    assert any(x.startswith("file3 line09") for x in picked)  # the end of the last file too
    assert list(LineSample(files, 400, 4000, seed=1)) == picked != list(LineSample(files, 400, 4000, seed=2))


def test_count_lines_counts_a_last_line_without_newline(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo")
    (tmp_path / "b.txt").write_text("three\n")
    assert count_lines([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]) == 3
    assert list(LineSample([str(tmp_path / "a.txt")], 2, 2)) == ["one", "two"]


@pytest.mark.parametrize("text, expected", [("4GiB", 4 << 30), ("512MiB", 512 << 20), ("2G", 2 << 30),
                                            ("2GB", 2 * 10**9), ("300", 300 << 20), ("1.5 gib", 3 << 29),
                                            ("1000b", 1000)])
def test_memory_budget_parsing(text, expected):
    assert parse_memory_budget(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "lots", "", "4 GiBs", "0.0GiB"])
def test_memory_budget_parsing_refuses(text):
    with pytest.raises(UsageError, match="--memory-budget"):
        parse_memory_budget(text)


GIB, V1_NO_LIMIT, JOB = 1 << 30, "9223372036854771712", "system.slice/slurmstepd.scope/job_7"
# A SLURM job (sbatch --mem=16G) under cgroup v2, under v1 (its memory controller beside an empty v2 tree, as
# on hybrid systems), and a v1 container without a cgroup namespace (its own cgroup mounted as the root):
# /proc/self/cgroup, /proc/self/mountinfo's cgroup mounts, the limit files and the limit expected.
CGROUP_TREES = {
    "v2": (f"0::/{JOB}/step_batch/user/task_0\n", [("/", "cg", "cgroup2 cgroup2 rw")],
           {"cg/system.slice/memory.max": "max", "cg/system.slice/slurmstepd.scope/memory.max": str(32 * GIB),
            f"cg/{JOB}/memory.max": str(16 * GIB), f"cg/{JOB}/step_batch/memory.max": "max",
            f"cg/{JOB}/step_batch/user/task_0/memory.max": "max"}, 16 * GIB),
    "v1": ("5:cpuacct,cpu:/slurm/job_7\n4:memory:/slurm/job_7/step_batch\n0::/\n",
           [("/", "cg/unified", "cgroup2 cgroup2 rw"), ("/", "cg/cpu,cpuacct", "cgroup cgroup rw,cpu,cpuacct"),
            ("/", "cg/memory", "cgroup cgroup rw,memory")],
           {"cg/memory/memory.limit_in_bytes": V1_NO_LIMIT, "cg/memory/slurm/memory.limit_in_bytes": V1_NO_LIMIT,
            "cg/memory/slurm/job_7/memory.limit_in_bytes": str(16 * GIB),
            "cg/memory/slurm/job_7/step_batch/memory.limit_in_bytes": V1_NO_LIMIT,
            "cg/cpu,cpuacct/slurm/job_7/memory.limit_in_bytes": str(GIB)}, 16 * GIB),  # not a memory hierarchy
    "container": ("4:memory:/docker/abc\n", [("/docker/abc", "cg/memory", "cgroup cgroup rw,memory")],
                  {"cg/memory/memory.limit_in_bytes": str(2 * GIB)}, 2 * GIB),
    "none": ("0::/user.slice\n", [("/", "cg", "cgroup2 cgroup2 rw")], {"cg/user.slice/memory.max": "max"}, None),
}


@pytest.mark.parametrize("tree", CGROUP_TREES)
def test_the_default_budget_takes_the_smallest_memory_limit_above_the_process(tmp_path, monkeypatch, tree):
    import tokenizer.memory

    cgroup, mounts, limits, expected = CGROUP_TREES[tree]
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "cgroup").write_text(cgroup)
    (tmp_path / "self" / "mountinfo").write_text("".join(
        f"{30 + i} 23 0:{30 + i} {root} {tmp_path / mount} rw,relatime - {options}\n"
        for i, (root, mount, options) in enumerate([("/", "proc", "proc proc rw")] + mounts)))
    for path, value in limits.items():
        os.makedirs(os.path.dirname(tmp_path / path), exist_ok=True)
        (tmp_path / path).write_text(value + "\n")
    monkeypatch.setattr(tokenizer.memory, "PROC_SELF", str(tmp_path / "self"))
    assert tokenizer.memory._cgroup_limit() == expected
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert tokenizer.memory.default_memory_budget() <= min(machine, expected or machine) // 2


def test_a_budget_over_the_corpus_fits_on_a_uniform_sample_within_it(tmp_path):
    files = marked_corpus(tmp_path / "train", files=3, lines=2000)
    corpus_bytes = sum(os.path.getsize(f) for f in files)
    budget = FIT_OVERHEAD + MEMORY_PER_TEXT_BYTE * corpus_bytes // 4  # room for a quarter of the text
    args = ["--corpus-dir", str(tmp_path / "train"), "--vocab-size", "300", "--memory-budget", f"{budget}b",
            "--no-progress"]
    result = run_in_process(FIT, *args, "--output-dir", str(tmp_path / "tok"))
    report = json.load(open(tmp_path / "tok" / "tokenizer_report.json"))
    assert (report["corpus_lines"], report["corpus_bytes"]) == (6000, corpus_bytes)
    assert report["memory_budget_bytes"] == budget
    assert report["sampled"] is True and report["fitted_lines"] == 1500 and "--memory-budget" in report["sample_reason"]
    assert report["fitted_bytes"] == corpus_bytes // 4 and report["estimated_full_fit_bytes"] > budget
    assert "fitting on 1,500 of 6,000 lines (25.0%" in result.stderr and "over --memory-budget" in result.stderr
    run_in_process(FIT, *args, "--output-dir", str(tmp_path / "again"))  # same seed: the same tokenizer
    assert (tmp_path / "tok" / "tokenizer.json").read_text() == (tmp_path / "again" / "tokenizer.json").read_text()


def test_max_lines_caps_a_uniform_sample(tmp_path):
    marked_corpus(tmp_path / "train", files=2, lines=500)
    run_in_process(FIT, "--corpus-dir", str(tmp_path / "train"), "--output-dir", str(tmp_path / "tok"),
                   "--vocab-size", "300", "--max-lines", "100", "--no-progress")
    report = json.load(open(tmp_path / "tok" / "tokenizer_report.json"))
    assert (report["fitted_lines"], report["corpus_lines"]) == (100, 1000)
    assert report["sample_reason"] == "capped by --max-lines 100"
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok")).mask_token_id == 4


@pytest.mark.parametrize("budget, words", [("100MiB", "too small"), (None, "on 1,000 lines"), ("0", "not a positive"),
                                           ("4 parsecs", "not a positive")])
def test_a_budget_too_small_to_fit_anything_is_refused_in_one_line(tmp_path, budget, words):
    files = marked_corpus(tmp_path / "train", files=1, lines=5000)
    if budget is None:  # above the fixed overhead, but room for only ~500 of the 5,000 lines
        budget = f"{FIT_OVERHEAD + MEMORY_PER_TEXT_BYTE * os.path.getsize(files[0]) // 10}b"
    result = run_in_process(FIT, "--corpus-dir", str(tmp_path / "train"), "--output-dir", str(tmp_path / "tok"),
                            "--memory-budget", budget, "--no-progress", check=False)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1 and err[0].startswith("error: --memory-budget"), err
    assert words in err[0] and not (tmp_path / "tok").exists()


def test_saved_files_load_as_those_transformers_writes(fitted, tmp_path):
    """save_tokenizer writes the config by hand (transformers' import is slow): AutoTokenizer must load it
    exactly as it loads transformers' own save_pretrained of the same tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from tokenizer.fitting import MODEL_MAX_LENGTH, SPECIAL_ROLES

    ours = AutoTokenizer.from_pretrained(str(fitted / "tok"))
    raw = Tokenizer.from_file(str(fitted / "tok" / "tokenizer.json"))
    PreTrainedTokenizerFast(tokenizer_object=raw, model_max_length=MODEL_MAX_LENGTH, **SPECIAL_ROLES).save_pretrained(
        str(tmp_path / "hf"))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    attributes = ["bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id", "unk_token_id", "cls_token_id",
                  "sep_token_id", "model_max_length", "all_special_ids", "all_special_tokens"]
    assert {a: getattr(ours, a) for a in attributes} == {a: getattr(theirs, a) for a in attributes}
    texts = ["Organic <mask> Blanket, 12\" Tall", "Petit Bébé ™", ""]
    assert ours(texts)["input_ids"] == theirs(texts)["input_ids"]
    assert ours.get_special_tokens_mask([0, 9, 4, 2, 1], already_has_special_tokens=True) == [1, 0, 1, 1, 1]
    assert theirs.get_special_tokens_mask([0, 9, 4, 2, 1], already_has_special_tokens=True) == [1, 0, 1, 1, 1]
