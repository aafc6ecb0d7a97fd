"""The README and docs/: the quick path runs as written, links resolve, no machine's paths, a short README."""
import glob
import json
import os
import re
import shlex
import subprocess
import sys

from conftest import REPO, TINY_MODEL

README = os.path.join(REPO, "README.md")
QUICK_PATH_MARKER = "<!-- quick-path"
# What the test adds to each quick-path script so that it runs in seconds on a CPU and prints no bars: step 3
# stops after 3 steps (or its --max-time, whichever comes first), with a smaller model than the preset.
QUICK_PATH_EXTRAS = {
    "corpus/run_corpus_generation.py": ["--no-progress"],
    "tokenizer/run_tokenizer_fitting.py": ["--no-progress"],
    "training/run_training.py": ["--max-steps", "3", *TINY_MODEL, "--accelerator", "cpu", "--no-progress"],
    "training/run_fill_mask.py": [],
}


def quick_path_commands() -> list[list[str]]:
    """The commands of the fenced bash block that follows the quick-path marker in README.md, as argv lists."""
    text = open(README, encoding="utf-8").read()
    assert QUICK_PATH_MARKER in text, f"README.md has no {QUICK_PATH_MARKER} ... --> marker before the quick-path block"
    after = text.split(QUICK_PATH_MARKER, 1)[1]
    block = re.search(r"^```bash\n(.*?)^```", after, re.S | re.M)
    assert block, "no ```bash block after the quick-path marker in README.md"
    assert not after[: block.start()].split("-->", 1)[1].strip(), "the quick-path block must follow its marker"
    commands = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def test_readme_quick_path_runs(tmp_path):
    """Each quick-path line, run from an empty directory (relative default paths land there) on the bundled
    sample: every step exits 0, the model is exported and fill-mask prints its table."""
    commands = quick_path_commands()
    assert [argv[:2] for argv in commands] == [["python", script] for script in QUICK_PATH_EXTRAS], commands
    assert "--max-time" in commands[2], "step 3 of the quick path trains for a --max-time budget"
    results = []
    for argv in commands:
        script = argv[1]
        cmd = [sys.executable, os.path.join(REPO, script), *argv[2:], *QUICK_PATH_EXTRAS[script]]
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{shlex.join(argv)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        results.append(result)
    for path in ["data/corpus/train", "data/corpus/validation", "data/corpus/manifest.json",
                 "data/tokenizer/tokenizer.json", "runs/titles/final_metrics.json",
                 "runs/titles/model/config.json", "runs/titles/model/model.safetensors"]:
        assert (tmp_path / path).exists(), f"the quick path did not write {path}"
    fill_mask = results[3].stdout
    assert "Organic cotton baby <mask>" in fill_mask and "rank" in fill_mask, fill_mask
    assert len(re.findall(r"^\s+[1-5]\s+\d\.\d{4}\s", fill_mask, re.M)) == 5, fill_mask


MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|Users|root|mnt|scratch)/[\w.-]+|C:\\Users")  # machine-path-pattern


def test_no_machine_paths_in_tracked_files():
    """No text file of the repository (tracked, or new and not ignored) shows a path of someone's machine."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    hits = []
    for name in filter(None, files):
        path = os.path.join(REPO, name)
        if not os.path.isfile(path):
            continue  # deleted in the working tree
        try:
            text = open(path, encoding="utf-8").read()
        except UnicodeDecodeError:
            continue  # binary: images, gzip
        for number, line in enumerate(text.splitlines(), 1):
            if "machine-path-pattern" not in line:
                hits += [f"{name}:{number}: {m.group(0)}" for m in MACHINE_PATH.finditer(line)]
    assert not hits, "absolute paths of a machine (show relative paths instead):\n" + "\n".join(hits)


def github_anchors(markdown: str) -> set[str]:
    """The #anchors GitHub gives the headings of a markdown text."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", without_fences(markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def without_fences(markdown: str) -> str:
    """The text outside fenced code blocks (where a `#` line is a comment, not a heading)."""
    return re.sub(r"^```.*?^```[^\n]*$", "", markdown, flags=re.S | re.M)


def without_code(markdown: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", without_fences(markdown))


def test_readme_links_resolve():
    """Every relative link and image of README.md and docs/*.md names a file that exists (and an anchor that
    its markdown target has); web links are not followed."""
    broken = []
    for doc in [README, *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]:
        text = without_code(open(doc, encoding="utf-8").read())
        links = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
        links += re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", text)
        for link in links:
            if re.match(r"[a-z][a-z0-9+.-]*:", link, re.I):
                continue  # http(s), mailto
            target, _, anchor = link.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(doc), target)) if target else doc
            where = f"{os.path.relpath(doc, REPO)}: {link}"
            if not os.path.exists(path):
                hint = (" (images/tensorboard.png is drawn by python images/screenshot_tensorboard.py after"
                        " make demo: run them and commit the picture)" if target.endswith("tensorboard.png") else "")
                broken.append(f"{where}: no such file{hint}")
            elif anchor and path.endswith(".md") and anchor not in github_anchors(open(path, encoding="utf-8").read()):
                broken.append(f"{where}: no heading with anchor #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    lines = len(open(README, encoding="utf-8").read().splitlines())
    assert lines <= 200, f"README.md has {lines} lines: keep it a newcomer's path, detail goes to docs/"


OWN_DATA_MARKER = "<!-- own-data"


def own_data_commands() -> list[list[str]]:
    """The commands of the fenced bash block that follows the own-data marker in README.md, as argv lists."""
    after = open(README, encoding="utf-8").read().split(OWN_DATA_MARKER, 1)[1]
    block = re.search(r"^```bash\n(.*?)^```", after, re.S | re.M)
    return [argv for line in block.group(1).replace("\\\n", " ").splitlines() if (argv := shlex.split(line, comments=True))]


def test_readme_own_data_examples_run(tmp_path):
    """Each "Run it on your own data" command, run as written from a directory holding files in the official
    layouts, with a local stand-in for the hub (HF_ENDPOINT): each reads what its comment says."""
    from amazon2023 import meta_rows, review_rows, write_jsonl
    from corpus.normalise import normalise_text
    from corpus.sample_data import write_sample_reviews
    from test_remote import AMAZON, FakeHub

    def jsonl(rows):
        return b"".join(json.dumps(r).encode() + b"\n" for r in rows)

    meta, beauty, appliances = meta_rows(200, seed=1), review_rows(150, seed=2), review_rows(150, seed=3)
    hub_files = {"raw/meta_categories/meta_All_Beauty.jsonl": jsonl(meta),
                 "raw/review_categories/All_Beauty.jsonl": jsonl(beauty),
                 "raw/review_categories/Appliances.jsonl": jsonl(appliances)}
    (tmp_path / "raw" / "meta_categories").mkdir(parents=True)
    write_jsonl(str(tmp_path / "raw" / "meta_categories" / "meta_All_Beauty.jsonl"), meta)
    (tmp_path / "reviews").mkdir()
    write_sample_reviews(str(tmp_path / "reviews" / "amazon_reviews_us_Baby_v1_00.tsv.gz"), n_products=200, seed=5)
    commands = own_data_commands()
    assert len(commands) == 4 and all(argv[:2] == ["python", "corpus/run_corpus_generation.py"] for argv in commands)
    with FakeHub({AMAZON: hub_files}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf_home")}
        for argv in commands:
            cmd = [sys.executable, os.path.join(REPO, argv[1]), *argv[2:], "--no-progress"]
            result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stderr[-3000:]}"

    def lines(name: str) -> set[str]:
        return {line for split in ("train", "validation") for f in (tmp_path / "data" / name / split).iterdir()
                for line in f.read_text(encoding="utf-8").splitlines()}

    def normalised(texts) -> set[str]:
        return {s for s in map(normalise_text, texts) if s}

    assert lines("titles") == normalised(r["title"] for r in meta)
    assert lines("reviews") == normalised(r["text"] for r in beauty + appliances)
    assert lines("items") == normalised(" ".join([r["title"], *r["features"], *r["description"]]) for r in meta)
    assert json.loads((tmp_path / "data" / "corpus" / "manifest.json").read_text())["rows_kept"] > 100
    manifest = json.loads((tmp_path / "data" / "reviews" / "manifest.json").read_text())
    assert [f["revision"] for f in manifest["source"]["remote_files"]] == [hub.main[AMAZON]] * 2


def test_the_documented_size_table_is_the_one_the_budget_uses():
    from training.config import SIZE_BY_BUDGET

    text = open(os.path.join(REPO, "docs", "training.md"), encoding="utf-8").read()
    low = None
    for limit, size, _ in SIZE_BY_BUDGET["cpu"]:
        budget = f"up to {limit:g} s" if limit != float("inf") else f"past {low:g} s"
        assert f"| CPU, float32 (`32-true`) | {budget} | `{size}` |" in text, (budget, size)
        low = limit
    first = SIZE_BY_BUDGET["cpu"][0]
    assert f"`{first[1]}` on float32 CPUs up to {first[0]:g} s" in open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
