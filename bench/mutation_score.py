"""Mutation testing of the modules that hold the pipeline's rules, with mutmut (not part of CI).

    pip install -e ".[bench]"     # mutmut 3.x
    python bench/mutation_score.py                      # the committed HEAD
    python bench/mutation_score.py --rev 34d7f34        # an older commit, to compare scores
    python bench/mutation_score.py --modules corpus/splitting.py corpus/normalise.py

mutmut changes one operator, constant or call at a time in the modules (a "mutant") and runs the tests
that exercise the changed function; a mutant that no test notices "survives". Runs on a copy of the
commit in a temporary directory (the working tree is never touched), against the in-process tests
listed per module below (tests that run the scripts in a subprocess do not see mutants). Prints, per
module, mutants killed / tested and the survivors' names (`mutmut show NAME` in the printed directory
shows each one's diff).
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_TESTS = ["tests/test_masking_and_loss.py", "tests/test_training_speed_path.py", "tests/test_reliability.py",
              "tests/test_evaluation.py", "tests/test_schedule.py"]
# The rules and the tests that check them in-process (fast enough to run once per mutant).
RULES = {
    "corpus/splitting.py": ["tests/test_corpus.py"],
    "corpus/normalise.py": ["tests/test_normalise.py", "tests/test_corpus.py"],
    # What training/data.py held before it was split, each against the tests that checked data.py; a --rev from
    # before the split mutates training/data.py itself (modules a commit lacks are skipped): "all" stays comparable.
    "training/masking.py": DATA_TESTS,
    "training/sequences.py": DATA_TESTS,
    "training/sampler.py": DATA_TESTS,
    "training/token_cache.py": DATA_TESTS,
    "training/data_module.py": DATA_TESTS,
    "training/data.py": DATA_TESTS,
    "training/model.py": ["tests/test_masking_and_loss.py", "tests/test_training_speed_path.py",
                          "tests/test_schedule.py"],
}
# mutmut wraps every mutated function in a trampoline, and a LightningModule's save_hyperparameters()
# reads its __init__ arguments from the caller's frame, which is then the trampoline's: the module's
# class is left unmutated (its rules are guarded by the deliberate regressions listed in docs/testing.md).
UNMUTATED_CLASSES = {"training/model.py": "MaskedLMModule"}
# Tests that only start subprocesses or servers: in the per-mutant runs they cost time and see nothing.
DESELECT = ["test_killed", "test_max_time", "test_signal", "test_diverging", "test_two_process",
            "ddp", "test_training_without_bf16"]


def exclude_class(path: str, name: str) -> None:
    """Mark every line of a top-level class `# pragma: no mutate` (in the copy only)."""
    lines, inside = open(path).read().splitlines(), False
    for i, line in enumerate(lines):
        if line.startswith(f"class {name}"):
            inside = True
        elif line and not line[0].isspace() and not line.startswith((")", "#")):
            inside = False
        if inside and line.strip() and not line.rstrip().endswith("\\"):
            lines[i] = f"{line}  # pragma: no mutate"
    open(path, "w").write("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", default="HEAD", help="commit to test (default: %(default)s)")
    p.add_argument("--modules", nargs="+", default=list(RULES), choices=list(RULES), help="modules to mutate")
    p.add_argument("--max-children", type=int, default=os.cpu_count(), help="parallel mutants (default: all cores)")
    p.add_argument("--workdir", help="where to put the copy (default: a new temporary directory, kept)")
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="mutation-")
    archive = subprocess.run(["git", "archive", args.rev], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", work], input=archive, check=True)
    args.modules = [m for m in args.modules if os.path.exists(os.path.join(work, m))]  # as the commit has them
    for module, cls in UNMUTATED_CLASSES.items():
        if module in args.modules:
            exclude_class(os.path.join(work, module), cls)
    tests = sorted({t for m in args.modules for t in RULES[m] if os.path.exists(os.path.join(work, t))})
    top = sorted(n for n in os.listdir(work) if n not in ("setup.cfg",))
    keep = " and ".join(f"not {d}" for d in DESELECT)
    with open(os.path.join(work, "setup.cfg"), "a") as f:
        f.write("[mutmut]\npaths_to_mutate=\n" + "".join(f"    {m}\n" for m in args.modules)
                + "tests_dir=\n" + "".join(f"    {t}\n" for t in tests)
                + "also_copy=\n" + "".join(f"    {n}\n" for n in top)
                + f"pytest_add_cli_args=\n    -p\n    no:cacheprovider\n    -k\n    {keep}\n")  # one argument a line
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)], cwd=work,
                   stdout=subprocess.DEVNULL, check=False)
    results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    survivors: dict[str, list[str]] = collections.defaultdict(list)
    for line in results.splitlines():
        if ": " not in line:
            continue
        name, status = (x.strip() for x in line.rsplit(": ", 1))
        module = next((m for m in args.modules if name.startswith(m[:-3].replace("/", ".") + ".")), None)
        if module is None:
            continue
        counts[module][status] += 1
        if status == "survived":
            survivors[module].append(name)
    print(f"\nrev {args.rev}, copy in {work}")
    print(f"{'module':<24}{'killed':>8}{'survived':>10}{'no tests':>10}{'other':>7}{'score':>8}")
    total = collections.Counter()
    for module in args.modules:
        c = counts[module]
        total.update(c)
        other = sum(c.values()) - c["killed"] - c["survived"] - c["no tests"]
        tested = c["killed"] + c["survived"]
        print(f"{module:<24}{c['killed']:>8}{c['survived']:>10}{c['no tests']:>10}{other:>7}"
              f"{c['killed'] / max(tested, 1):>8.1%}")
    tested = total["killed"] + total["survived"]
    print(f"{'all':<24}{total['killed']:>8}{total['survived']:>10}{total['no tests']:>10}{'':>7}"
          f"{total['killed'] / max(tested, 1):>8.1%}")
    for module in args.modules:
        if survivors[module]:
            print(f"\nsurvivors in {module}:\n  " + "\n  ".join(survivors[module]))


if __name__ == "__main__":
    main()
