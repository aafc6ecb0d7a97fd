"""Plot a run's learning curves from its TensorBoard event files into a PNG.

    python training/plot_learning_curves.py --job-dir runs/demo/job --output images/learning_curves.png
"""
import argparse
import os
import sys

from corpus.errors import UsageError, run_main

PANELS = [
    ("loss", ["train/loss", "val/loss"]),
    ("validation perplexity", ["val/perplexity"]),
    ("MLM accuracy", ["train/mlm_accuracy", "val/mlm_accuracy"]),
    ("learning rate", ["lr"]),
    ("tokens / s", ["throughput/tokens_per_sec"]),
]


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


def plot_learning_curves(job_dir: str, output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_dir = os.path.join(job_dir, "tensorboard")
    if not os.path.isdir(log_dir):
        raise UsageError(f"no TensorBoard logs in {log_dir!r}; pass the --job-dir of a training run")
    series = read_scalars(log_dir)
    panels = [(title, [t for t in tags if t in series]) for title, tags in PANELS]
    panels = [(title, tags) for title, tags in panels if tags]
    if not panels:
        raise UsageError(f"the logs in {log_dir!r} hold no training metrics yet; train for longer")
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
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job-dir", required=True, help="the training run's --job-dir")
    p.add_argument("--output", help="PNG to write (default: JOB/learning_curves.png)")
    args = p.parse_args(argv)
    output = args.output or os.path.join(args.job_dir, "learning_curves.png")
    plot_learning_curves(args.job_dir, output)
    print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
