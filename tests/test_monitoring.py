"""What a user sees while a run goes: fill-mask tables and embeddings in TensorBoard, served over HTTP as
the web page reads them, and several runs overlaid in one plot."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY_MODEL, run_script
from training.watch import FILL_MASK_TAG


def train_tiny(pipeline_run, job, *extra):
    corpus = pipeline_run["corpus"]
    return run_script("training/run_training.py", "--job-dir", str(job), "--path-to-train-set", f"{corpus}/train",
                      "--path-to-val-set", f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"],
                      *TINY_MODEL, "--max-steps", "8", "--validate-every-n-steps", "4", "--log-every-n-steps", "2",
                      "--accelerator", "cpu", "--no-progress", *extra)


@pytest.fixture(scope="module")
def two_runs(pipeline_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train_tiny(pipeline_run, root / "a", "--lr", "2e-3", "--log-embeddings", "20")
    train_tiny(pipeline_run, root / "b", "--lr", "5e-3")
    return root / "a", root / "b"


def events(job):
    acc = EventAccumulator(os.path.join(job, "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_fill_mask_table_is_logged_at_each_validation_and_changes(two_runs):
    acc = events(two_runs[0])
    tables = [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(f"{FILL_MASK_TAG}/text_summary")]
    assert [step for step, _ in tables] == [4, 8]
    lines = tables[0][1].splitlines()
    assert lines[0].startswith("| text | expected | top 1 | top 2 | top 3 |") and len(lines) == 2 + 8
    assert all("<mask>" in line and line.count("(0.") + line.count("(1.") == 3 for line in lines[2:])
    assert tables[0][1] != tables[1][1]  # the model learned between the two validations


def test_token_embeddings_go_to_the_projector(two_runs):
    board = os.path.join(two_runs[0], "tensorboard")
    config = open(os.path.join(board, "projector_config.pbtxt")).read()
    assert "token_embeddings" in config
    metadata = [os.path.join(root, f) for root, _, files in os.walk(board) for f in files if f == "metadata.tsv"]
    tokens = open(metadata[0], encoding="utf-8").read().splitlines()
    assert len(tokens) == 20 and "<s>" not in tokens and "<pad>" not in tokens


def test_watch_texts_replace_the_samples_and_a_line_without_mask_is_refused(tmp_path, pipeline_run):
    texts = tmp_path / "watch.txt"
    texts.write_text("Organic cotton baby <mask>\nThe <mask> bottle, 9 oz\n")
    train_tiny(pipeline_run, tmp_path / "job", "--watch-texts", str(texts), "--max-steps", "4")
    table = events(tmp_path / "job").Tensors(f"{FILL_MASK_TAG}/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "Organic cotton baby<mask>" in table.replace(" <mask>", "<mask>") and len(table.splitlines()) == 4
    texts.write_text("Organic cotton baby <mask>\nno mask here\n")
    result = run_script("training/run_training.py", "--job-dir", str(tmp_path / "bad"), "--path-to-train-set",
                        f"{pipeline_run['corpus']}/train", "--path-to-val-set", f"{pipeline_run['corpus']}/validation",
                        "--path-to-tokenizer", pipeline_run["tokenizer"], "--watch-texts", str(texts), check=False)
    assert result.returncode == 2 and "line 2 has 0 <mask>" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_several_runs_overlay_in_one_plot(two_runs, tmp_path):
    from training.plot_learning_curves import run_labels

    assert run_labels([str(j) for j in two_runs]) == ["lr=0.002, log_embeddings=20", "lr=0.005, log_embeddings=0"] or \
        run_labels([str(j) for j in two_runs]) == ["log_embeddings=20, lr=0.002", "log_embeddings=0, lr=0.005"]
    out = tmp_path / "compare.png"
    run_script("training/plot_learning_curves.py", "--job-dir", *map(str, two_runs), "--output", str(out))
    assert out.stat().st_size > 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_serves_the_scalars_and_the_fill_mask_table(two_runs):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(two_runs[0] / "tensorboard"),
                               "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(path, **query):
        url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.time() + 60
        while True:  # the server is up once it lists the runs with their scalars
            try:
                tags = get("/data/plugin/scalars/tags")
                if tags:
                    break
            except OSError:
                pass
            assert time.time() < deadline and server.poll() is None, "tensorboard did not start"
            time.sleep(0.5)
        run = next(iter(tags))
        assert {"val/loss", "train/loss", "throughput/tokens_per_sec"} <= set(tags[run])
        series = get("/data/plugin/scalars/scalars", run=run, tag="val/loss")
        in_files = [(e.step, e.value) for e in events(two_runs[0]).Scalars("val/loss")]
        assert [(step, value) for _, step, value in series] == in_files and len(in_files) == 2
        text_tag = f"{FILL_MASK_TAG}/text_summary"  # the name TensorBoard gives add_text's summaries
        assert text_tag in get("/data/plugin/text/tags")[run]
        texts = get("/data/plugin/text/text", run=run, tag=text_tag)
        assert len(texts) == 2 and "<table>" in texts[-1]["text"] and "top 3" in texts[-1]["text"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_line_about_one_rank_names_it_under_srun_and_the_others_print_once(monkeypatch):
    """srun sets SLURM_NTASKS, not WORLD_SIZE: the line about one rank still names it; other lines, rank 0 only."""
    import logging

    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from training.job import _OncePerRun

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setattr(rank_zero_only, "rank", 1)

    def record(msg: str, **extra) -> logging.LogRecord:
        r = logging.LogRecord("training", logging.WARNING, __file__, 1, msg, (), None)
        r.__dict__.update(extra)
        return r

    once = _OncePerRun()
    about_me = record("received SIGUSR1: saving a checkpoint at the next step", each_rank=True)
    assert once.filter(about_me) and about_me.getMessage().startswith("rank 1: received SIGUSR1")
    assert not once.filter(record("checkpoint saved at step 3"))
