"""How the scripts start: --help and a mistyped flag answer without importing torch, Lightning, transformers,
datasets or pyarrow (issue 31, item 14), and a script runs its own checkout's code or refuses in one line,
never another checkout's installed over it (item 12)."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPTS = ["corpus/run_corpus_generation.py", "tokenizer/run_tokenizer_fitting.py", "training/run_training.py",
           "training/run_fill_mask.py", "training/run_evaluation.py", "training/run_probe.py",
           "training/export_model.py", "training/plot_learning_curves.py"]
HEAVY = {"torch", "pytorch_lightning", "lightning", "transformers", "datasets", "pyarrow", "matplotlib", "tensorboard"}


def run(args: list[str], cwd: str, pythonpath: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def split_importtime(stderr: str) -> tuple[set[str], list[str]]:
    """(top-level modules imported, the other stderr lines) from `python -X importtime`'s stderr."""
    modules, lines = set(), []
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
        else:
            lines.append(line)
    return modules, lines


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_a_bad_flag_import_no_heavy_module(script):
    name = os.path.basename(script)
    for flag, code in (("--help", 0), ("--no-such-flag", 2)):
        result = run(["-X", "importtime", script, flag], REPO, REPO)
        modules, lines = split_importtime(result.stderr)
        assert result.returncode == code, result.stderr[-2000:]
        assert "argparse" in modules  # importtime's output was read
        assert not modules & HEAVY, f"{script} {flag} imported {sorted(modules & HEAVY)}"
        if code == 2:  # the flag's error, or a missing required flag's: one line either way
            (line,) = lines
            assert line.startswith("error: ") and line.endswith(f"(see {name} --help)"), line


def test_a_bad_training_setting_imports_no_heavy_module(tmp_path):
    result = run(["-X", "importtime", "training/run_training.py", "--job-dir", str(tmp_path / "job"),
                  "--max-seq-length", "1000"], REPO, REPO)
    modules, lines = split_importtime(result.stderr)
    assert result.returncode == 2
    assert not modules & HEAVY, sorted(modules & HEAVY)
    assert lines == ["error: --max-seq-length must be between 8 and 512 (the model's position embeddings), got 1000"]
    assert not os.path.exists(tmp_path / "job")


@pytest.fixture(scope="module")
def two_clones(tmp_path_factory) -> tuple[str, str]:
    """Two copies of this checkout's code, A and B, as two clones of the project would be."""
    clones = []
    for name in ("clone-a", "clone-b"):
        root = str(tmp_path_factory.mktemp(name))
        shutil.copy(os.path.join(REPO, "common.py"), root)
        for package in ("corpus", "tokenizer", "training"):
            shutil.copytree(os.path.join(REPO, package), os.path.join(root, package),
                            ignore=shutil.ignore_patterns("__pycache__"))
        clones.append(os.path.realpath(root))
    return clones[0], clones[1]


@pytest.mark.parametrize("script", ["training/run_training.py", "corpus/run_corpus_generation.py"])
def test_a_script_refuses_another_checkouts_packages_in_one_line(two_clones, script):
    a, b = two_clones
    # Clone A installed in the environment (as `pip install -e A` would, simulated by PYTHONPATH), B's script run.
    result = run([os.path.join(b, script), "--help"], b, a)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: this script is in {b} but Python imports 'common' from {a}{os.sep}common.py")
    assert f"pip install -e {b}" in line and f"run the script in {a}" in line


def test_a_script_runs_its_own_checkout(two_clones):
    a, b = two_clones
    for clone in (a, b):  # each clone installed (PYTHONPATH), its own script run: it runs
        assert run([os.path.join(clone, "training/run_training.py"), "--help"], clone, clone).returncode == 0
    # `python -m` from a checkout runs that checkout whatever is installed: the cwd comes first on sys.path.
    result = run(["-m", "training.run_training", "--help"], b, a)
    assert result.returncode == 0 and result.stdout.startswith("usage: run_training.py"), result.stderr


def test_a_script_with_nothing_installed_says_how_to_install(two_clones):
    _, b = two_clones
    result = run(["-S", os.path.join(b, "training/run_training.py"), "--help"], b, None)  # -S: no site-packages
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "this project is not installed; run `pip install -e .` in its checkout" in line
