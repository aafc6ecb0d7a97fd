"""How the scripts start: --help and a mistyped flag answer without importing torch, Lightning, transformers,
datasets or pyarrow (issue 31, item 14)."""
import os
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
