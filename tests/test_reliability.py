import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY_MODEL, run_in_process, run_script, scalars
from training.sampler import TrainingStream


def record_renames_and_fsyncs(monkeypatch) -> list[tuple]:
    """os.replace and os.fsync calls from now on, in order: ("replace", destination) and ("fsync", dev, inode)."""
    events, replace, fsync = [], os.replace, os.fsync

    def recording_replace(src, dst, **kwargs):
        replace(src, dst, **kwargs)
        events.append(("replace", os.fspath(dst)))

    def recording_fsync(fd):
        fsync(fd)
        events.append(("fsync", os.fstat(fd).st_dev, os.fstat(fd).st_ino))

    monkeypatch.setattr(os, "replace", recording_replace)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    return events


def assert_renamed_durably(events: list[tuple], path: str) -> None:
    """The file was fsynced before its rename to `path`, and its directory after it."""
    file, directory = (("fsync", s.st_dev, s.st_ino) for s in (os.stat(path), os.stat(os.path.dirname(path))))
    renamed = events.index(("replace", path))
    assert file in events[:renamed] and directory in events[renamed + 1 :], events


def test_json_writes_reach_the_disk_before_and_after_their_rename(tmp_path, monkeypatch):
    from common import write_json_atomic

    events = record_renames_and_fsyncs(monkeypatch)
    write_json_atomic(str(tmp_path / "run_config.json"), {"seed": 42})
    assert_renamed_durably(events, str(tmp_path / "run_config.json"))


def test_a_published_corpus_reaches_the_disk_before_the_old_one_goes(tmp_path, monkeypatch, sample_tsv):
    from corpus.pipeline import CorpusConfig, generate_corpus

    out = str(tmp_path / "corpus")
    generate_corpus(CorpusConfig(output_dir=out, data_files=[sample_tsv], progress=False))
    events = record_renames_and_fsyncs(monkeypatch)
    generate_corpus(CorpusConfig(output_dir=out, data_files=[sample_tsv], progress=False, overwrite=True))
    parent = os.stat(tmp_path)
    renamed = events.index(("replace", out))
    assert ("fsync", parent.st_dev, parent.st_ino) in events[renamed + 1 :], events


def test_a_directory_that_cannot_be_fsynced_does_not_stop_the_run(tmp_path, monkeypatch):
    """SMB/CIFS, sshfs and gocryptfs answer a directory's fsync with EINVAL or ENOTSUP: the write goes on."""
    import errno

    from common import write_json_atomic

    fsync = os.fsync

    def refusing_directories(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", refusing_directories)
    write_json_atomic(str(tmp_path / "run_config.json"), {"seed": 1})
    assert json.loads((tmp_path / "run_config.json").read_text()) == {"seed": 1}


def test_an_export_reaches_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    from common import publish

    staging, out = tmp_path / "staging", tmp_path / "model"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"weights")
    events = record_renames_and_fsyncs(monkeypatch)
    file = os.stat(staging / "model.safetensors")
    publish(str(staging), str(out), fsync_files=True)
    assert ("fsync", file.st_dev, file.st_ino) in events[: events.index(("replace", str(out)))]


def test_a_stop_signal_before_a_validating_step_is_seen_there_whatever_the_check_interval():
    """On GPUs the ranks agree on a signal every 10 steps; a step that validates is checked too, or a signal
    would wait for a whole validation (validate every 25, check every 10)."""
    from types import SimpleNamespace

    from training.trainer_setup import LastCheckpoint, StopSignals

    signals = StopSignals()
    last = LastCheckpoint("unused.ckpt", every_n_steps=500, validate_every_n_steps=25, check_every_n_steps=10,
                          signals=signals)
    trainer = SimpleNamespace(global_step=24, world_size=1, should_stop=False)
    last.on_train_start(trainer, None)
    signals.received = signal.SIGTERM
    trainer.global_step = 25
    last.on_train_batch_end(trainer, None, None, None, 0)
    assert last._stop_at_validation == signal.SIGTERM


def test_checkpoints_reach_the_disk_before_and_after_their_rename(tmp_path, monkeypatch):
    from training.trainer_setup import AtomicCheckpointIO

    events = record_renames_and_fsyncs(monkeypatch)
    path = str(tmp_path / "checkpoints" / "last.ckpt")
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "weights": torch.arange(4)}, path)
    assert_renamed_durably(events, path)
    assert torch.load(path)["weights"].tolist() == [0, 1, 2, 3]


def take(stream, n):
    return list(itertools.islice(iter(stream), n))


def test_training_stream_goes_on_where_it_stopped_on_any_topology():
    full = take(TrainingStream(100, seed=3), 250)
    assert [e for e, _ in full] == [0] * 100 + [1] * 100 + [2] * 50  # epoch after epoch, no end
    assert sorted(i for _, i in full[:100]) == list(range(100)) and full[:100] != [(0, i) for i in range(100)]
    assert full[100:200] != full[:100]  # a new epoch, a new order
    assert take(TrainingStream(100, seed=3, start=40), 60) == full[40:100]
    # 4 ranks share each global batch: rank r takes positions start + r, start + r + 4, ...
    shares = [take(TrainingStream(100, seed=3, rank=r, world_size=4, start=40), 30) for r in range(4)]
    assert sorted(sum(shares, [])) == sorted(full[40:160]) and all(len(set(s)) == 30 for s in shares)
    assert take(TrainingStream(100, seed=4), 100) != full[:100]


def train_args(pipeline_run, job, *extra):
    corpus = pipeline_run["corpus"]
    return ["--job-dir", str(job), "--path-to-train-set", f"{corpus}/train", "--path-to-val-set",
            f"{corpus}/validation", "--path-to-tokenizer", pipeline_run["tokenizer"], *TINY_MODEL,
            "--accelerator", "cpu", "--no-progress", "--log-every-n-steps", "1", *extra]


def start_training(args):
    return subprocess.Popen([sys.executable, "training/run_training.py", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.001)  # kill as soon as it appears: the window a lost log point would fall in


def test_killed_run_resumes_and_reaches_max_steps(tmp_path, pipeline_run):
    job = tmp_path / "job"
    args = train_args(pipeline_run, job, "--max-steps", "30", "--checkpoint-every-n-steps", "8",
                      "--validate-every-n-steps", "15")
    i = args.index("--batch-size")
    del args[i:i + 2]
    started_with = ["--lr", "2e-4", "--mlm-probability", "0.2", "--batch-size", "12"]  # not the defaults (1e-3, 0.3, 8)
    proc = start_training(args + started_with)
    wait_for(job / "checkpoints" / "last.ckpt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 8 <= killed_at < 30
    result = run_script("training/run_training.py", *args)  # resumed without those flags: it keeps them
    assert "resuming from" in result.stderr
    config = json.loads((job / "run_config.json").read_text())["config"]
    assert (config["lr"], config["mlm_probability"], config["batch_size"]) == (2e-4, 0.2, 12)
    assert max(lr for _, lr in scalars(job, "lr")) == pytest.approx(2e-4)
    assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    steps = [step for step, _ in scalars(job, "train/loss")]  # without those a crash orphaned
    assert steps == list(range(steps[0], steps[0] + len(steps))) and len(steps) == 30, steps
    metrics = run_script("training/export_model.py", "--checkpoint", str(job / "checkpoints" / "last.ckpt"),
                         "--output-dir", str(tmp_path / "exported"))
    assert "step 30" in metrics.stderr and (tmp_path / "exported" / "model.safetensors").is_file()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_at_the_current_step(tmp_path, pipeline_run, signum):
    job = tmp_path / "job"
    proc = start_training(train_args(pipeline_run, job, "--max-steps", "10000", "--checkpoint-every-n-steps", "5",
                                     "--validate-every-n-steps", "10000"))
    wait_for(job / "checkpoints" / "last.ckpt")
    time.sleep(1.5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr and "run the same command again to resume" in stderr
    step = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert f"at step {step};" in stderr and step > 5


def test_diverging_run_stops_with_a_clear_message(tmp_path, pipeline_run):
    result = run_in_process("training/run_training.py", *train_args(pipeline_run, tmp_path / "job", "--lr", "1e30",
                            "--max-steps", "40", "--max-bad-steps", "3", "--gradient-clip-val", "0"), check=False)
    assert result.returncode == 1 and "lower --lr" in result.stderr and "Traceback" not in result.stderr


def test_length_grouped_batches_keep_the_resume_contract():
    import numpy as np

    lengths = np.random.default_rng(0).integers(3, 120, size=1000)
    stream = lambda **kw: TrainingStream(1000, seed=5, lengths=lengths, group=32, **kw)
    full = [i for _, i in take(stream(), 1000)]
    assert sorted(full) == list(range(1000))
    batches = [full[i : i + 32] for i in range(0, 1000, 32)]
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 10  # similar lengths within a batch (random batches would spread over ~110)
    assert [i for _, i in take(stream(start=320), 680)] == full[320:]


def test_length_grouping_is_the_stable_sort_by_run_then_longest_first():
    """group_by_length sorts in slices, in place: its order must be the plain rule's, or a resumed
    --no-packing run would take other sentences than the one it continues."""
    import numpy as np

    from training.sampler import group_by_length

    for n, batch in ((1, 4), (799, 16), (800, 16), (5_000, 7), (70_001, 32)):
        rng = np.random.default_rng(n)
        lengths = rng.integers(1, 40, n).astype(np.uint16)  # many ties
        order = rng.permutation(n).astype(np.int32)
        runs = np.arange(n) // (batch * 50)
        by_rule = order[np.lexsort((-lengths[order].astype(np.int64), runs))]
        full = n // batch
        by_rule = np.concatenate([by_rule[: full * batch].reshape(full, batch)[np.random.default_rng(1).permutation(full)]
                                  .reshape(-1), by_rule[full * batch :]])
        assert np.array_equal(group_by_length(order.copy(), lengths, batch, np.random.default_rng(1)), by_rule)


def test_max_time_stops_cleanly_then_validates_and_exports(tmp_path, pipeline_run):
    import json

    from test_exact_resume import final_state, run

    job = tmp_path / "job"
    args = train_args(pipeline_run, job, "--max-steps", "100000", "--max-time", "6", "--validate-every-n-steps",
                      "100000", "--no-packing")
    run(args, -9, KILL_IN_EXPORT=1)  # killed after the budget, while exporting: the rerun trains no more
    spent = final_state(job)["global_step"]
    run_script("training/run_training.py", *args)
    metrics = json.load(open(job / "final_metrics.json"))
    assert metrics["global_step"] == spent
    assert 0 < metrics["global_step"] < 100000 and metrics["train_seconds"] < 30
    assert (job / "model" / "model.safetensors").is_file() and metrics["val_loss"] > 0
    events = EventAccumulator(os.path.join(job, "tensorboard"))
    events.Reload()
    assert {"throughput/tokens_per_sec", "throughput/samples_per_sec"} <= set(events.Tags()["scalars"])


def test_the_checkpoint_a_resume_reads_is_always_the_last_one_written(tmp_path, pipeline_run):
    from test_exact_resume import final_state, run

    job = tmp_path / "job"
    args = lambda job, every: train_args(pipeline_run, job, "--max-steps", "9", "--checkpoint-every-n-steps", every,
                                         "--validate-every-n-steps", "100")
    checkpoints = lambda job: (os.listdir(job / "checkpoints"), final_state(job)["global_step"])
    # preempted before the first periodic save: the signal's checkpoint is last.ckpt
    run(args(job, "4"), 128 + signal.SIGTERM, SIGNAL_AT_STEP=1, SIGNAL="SIGTERM")
    assert checkpoints(job) == (["last.ckpt"], 2)
    # moved elsewhere and resumed with another interval (saves at 3, 6, 9: never to last-v1.ckpt), then killed
    # while exporting after the final validation
    moved = tmp_path / "moved"
    os.replace(job, moved)
    run(args(moved, "3"), -9, KILL_IN_EXPORT=1)
    assert checkpoints(moved) == (["last.ckpt"], 9) and not (moved / "final_metrics.json").exists()
    # rerun: training is done, so it validates and exports, counting every token trained on
    trained = final_state(moved)["seen"][0]
    result = run(args(moved, "3"))
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["global_step"] == 9 and metrics["train_tokens"] == trained > 0
    assert (moved / "model" / "model.safetensors").is_file() and metrics["val_loss"] > 0


def test_a_signal_while_lightning_sets_up_stops_every_rank_at_the_first_step(tmp_path, pipeline_run):
    from test_exact_resume import final_state, run

    # rank 1 alone, after Lightning would have put in its own handler (which broadcasts on that rank only)
    result = run(train_args(pipeline_run, tmp_path / "job", "--max-steps", "50", "--devices", "2", "--strategy",
                            "ddp", "--batch-size", "8"), 128 + signal.SIGTERM, SIGNAL_AT_STEP="loader", SIGNAL_RANK=1)
    assert "stopped: by SIGTERM at step 1;" in result.stderr and final_state(tmp_path / "job")["global_step"] == 1
    # two processes, one set of lines; the line about one rank names it
    for line in ("stopped: by SIGTERM", "checkpoint saved at step", "device plan:", "schedule:", "sentences, fixed masks"):
        assert result.stderr.count(line) == 1, (line, result.stderr[-3000:])
    assert result.stderr.count("rank 1: received SIGTERM") == 1, result.stderr[-3000:]


def test_sigusr1_under_slurm_saves_then_requeues_the_job(tmp_path, pipeline_run):
    from test_exact_resume import run

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/scontrol.log\n")
    (bin_dir / "scontrol").chmod(0o755)
    slurm = dict(SLURM_NTASKS=1, SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NODEID=0, SLURM_JOB_ID=4242,
                 SLURM_JOB_NAME="lm", SLURM_NODELIST="localhost", PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = run(train_args(pipeline_run, tmp_path / "job", "--max-steps", "50", "--devices", "1"),
                 128 + signal.SIGUSR1, SIGNAL_AT_STEP=2, SIGNAL="SIGUSR1", **slurm)
    assert "stopped: by SIGUSR1 at step 3;" in result.stderr and "requeued SLURM job 4242" in result.stderr
    assert open(tmp_path / "scontrol.log").read().split() == ["requeue", "4242"]


def test_a_validation_sample_smaller_than_the_ranks_is_refused_on_every_rank(tmp_path, pipeline_run):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from common import UsageError
    from training.data_module import MaskedLMDataModule

    corpus, tok = pipeline_run["corpus"], pipeline_run["tokenizer"]
    module = lambda: MaskedLMDataModule(f"{corpus}/train", f"{corpus}/validation", AutoTokenizer.from_pretrained(tok),
                                        f"{tok}/tokenizer.json", str(tmp_path / "cache"), max_val_sentences=3)
    for rank in range(4):  # a rank with nothing to score would skip validation while the others wait in its sums
        data = module()
        data.trainer = SimpleNamespace(global_rank=rank, world_size=4)
        with pytest.raises(UsageError, match="validation sample has 3 sentence.* for 4 processes"):
            data.setup("fit")
    data = module()
    data.trainer = SimpleNamespace(global_rank=2, world_size=3)
    data.setup("fit")


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_stop_signals_to_the_process_group_spare_the_dataloader_workers(tmp_path, pipeline_run, start_method):
    """As a terminal's Ctrl+C, srun or `kill -- -PGID` send them: workers started by any method must live on
    until the training process has saved its checkpoint (spawn is macOS's default, forkserver Python 3.14's)."""
    from test_exact_resume import final_state

    env = dict(os.environ, SIGNAL_AT_STEP="2", SIGNAL="SIGTERM,SIGUSR1,SIGINT", SIGNAL_GROUP="1",
               START_METHOD=start_method)
    result = subprocess.run([sys.executable, "tests/interrupting_runner.py", *train_args(
        pipeline_run, tmp_path / "job", "--max-steps", "50", "--num-workers", "2")], cwd=REPO, capture_output=True,
        text=True, env=env, start_new_session=True, timeout=300)
    name = signal.Signals(result.returncode - 128).name  # all three arrive at once: the main process acts on one
    assert f"stopped: by {name} at step 3;" in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "dataloader workers alive: 2 of 2" in result.stderr
    assert result.stderr.count("received SIGINT") == 1, result.stderr  # not once more per forked worker
    assert final_state(tmp_path / "job")["global_step"] == 3
