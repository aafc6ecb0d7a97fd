"""Plot learning curves from TensorBoard event files into a PNG: one run's panels, or several runs overlaid.

    python training/plot_learning_curves.py --job-dir runs/demo/job --output images/learning_curves.png
    python training/plot_learning_curves.py --job-dir runs/lr1e-3 runs/lr3e-3 --output compare.png

With several --job-dir values, validation and training loss are drawn against steps, tokens seen and
training time, one colour per run, labelled with the settings in which the runs differ (run_config.json).
"""
import argparse
import json
import os
import sys


try:  # common first: it checks that the packages Python imports are this checkout's
    import common
except ImportError:
    sys.exit("error: this project is not installed; run `pip install -e .` in its checkout (docs/troubleshooting.md)")
common.check_own_checkout(__file__)

from common import ArgumentParser, PipelineError, UsageError, run_main

PANELS = [
    ("loss", ["train/loss", "val/loss"]),
    ("validation perplexity", ["val/perplexity"]),
    ("MLM accuracy", ["train/mlm_accuracy", "val/mlm_accuracy"]),
    ("learning rate", ["lr"]),
    ("tokens / s", ["throughput/tokens_per_sec"]),
]
AXES = [("step", None), ("tokens seen", "progress/tokens_seen"), ("training seconds", "progress/train_seconds")]
IGNORED_SETTINGS = {"job_dir", "resume", "progress", "cache_dir"}


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files, with TensorBoard's own reader; the last value wins per step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    events.Reload()
    series = {}
    for tag in events.Tags()["scalars"]:
        by_step = {e.step: e.value for e in events.Scalars(tag)}
        series[tag] = sorted(by_step.items())
    return series


def run_scalars(job_dir: str) -> dict[str, list[tuple[int, float]]]:
    log_dir = os.path.join(job_dir, "tensorboard")
    if not os.path.isdir(log_dir):
        raise UsageError(f"no TensorBoard logs in {log_dir!r}; pass the --job-dir of a training run")
    series = read_scalars(log_dir)
    if not any(tag in series for _, tags in PANELS for tag in tags):
        raise UsageError(f"the logs in {log_dir!r} hold no training metrics yet; train for longer")
    return series


def _pyplot():
    try:
        import matplotlib
    except ImportError:  # an environment installed without it (--no-deps, or before it was a dependency)
        raise PipelineError("this script needs matplotlib, which is not installed; pip install matplotlib") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, output: str) -> None:
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output)


def plot_learning_curves(job_dir: str, output: str) -> None:
    """One run: loss, perplexity, accuracy, learning rate and throughput against steps."""
    plt = _pyplot()
    series = run_scalars(job_dir)
    panels = [(title, [t for t in tags if t in series]) for title, tags in PANELS]
    panels = [(title, tags) for title, tags in panels if tags]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), dpi=110)
    for ax, (title, tags) in zip(list(getattr(axes, "flat", [axes])), panels):
        for tag in tags:
            steps, values = zip(*series[tag])
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=tag)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title == "validation perplexity":
            ax.set_yscale("log")
        if len(tags) > 1:
            ax.legend(fontsize=8)
    _save(fig, output)
    plt.close(fig)


def run_labels(job_dirs: list[str]) -> list[str]:
    """A legend entry per run: the settings in which the runs differ, else the directory's name."""
    configs = []
    for job in job_dirs:
        path = os.path.join(job, "run_config.json")
        configs.append(json.load(open(path))["config"] if os.path.isfile(path) else {})
    keys = sorted({k for c in configs for k in c} - IGNORED_SETTINGS)
    differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    labels = []
    for job, config in zip(job_dirs, configs):
        parts = [f"{k}={config.get(k)}" for k in differing if k not in ("train_path", "val_path")]
        labels.append(", ".join(parts) or os.path.basename(os.path.normpath(job)))
    return labels


def plot_runs(job_dirs: list[str], output: str) -> None:
    """Several runs: validation and training loss against steps, tokens seen and training time."""
    import numpy as np

    plt = _pyplot()
    runs = [run_scalars(job) for job in job_dirs]
    fig, axes = plt.subplots(2, len(AXES), figsize=(4.6 * len(AXES), 6.4), dpi=110, squeeze=False)
    for label, series, colour in zip(run_labels(job_dirs), runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 9):
        for row, tag in enumerate(("val/loss", "train/loss")):
            if tag not in series:
                continue
            steps, values = (np.array(v, dtype=float) for v in zip(*series[tag]))
            for col, (name, progress) in enumerate(AXES):
                if progress is None:
                    x = steps
                elif progress in series:  # the progress series is logged at other steps: interpolate
                    p_steps, p_values = (np.array(v, dtype=float) for v in zip(*series[progress]))
                    x = np.interp(steps, np.concatenate([[0], p_steps]), np.concatenate([[0], p_values]))
                else:
                    continue
                ax = axes[row][col]
                ax.plot(x, values, color=colour, marker="o" if len(steps) < 30 else None, ms=3, label=label,
                        alpha=1.0 if tag == "val/loss" else 0.8)
                ax.set_xlabel(name)
                ax.set_title(tag)
                ax.grid(alpha=0.3)
    for ax in axes.flat:
        if ax.lines:
            ax.legend(fontsize=7)
    _save(fig, output)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job-dir", required=True, nargs="+",
                   help="the --job-dir of a training run; several to overlay their loss curves")
    p.add_argument("--output", help="PNG to write (default: JOB/learning_curves.png of the first job)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    output = args.output or os.path.join(args.job_dir[0], "learning_curves.png")
    if len(args.job_dir) == 1:
        plot_learning_curves(args.job_dir[0], output)
    else:
        plot_runs(args.job_dir, output)
    print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
