"""A resumed run goes on from the samples already consumed, on other hardware, batch size or accumulation;
another seed or other training data is refused."""
import collections
import glob
import json
import os
import shutil

import pytest

from common import UsageError
from conftest import scalars
from test_exact_resume import final_state, job_args, run
from training.config import TrainingConfig
from training.job_dir import prepare_job_dir
from training.token_cache import files_fingerprint, text_files


def trained_samples(log_dir, per_process: int) -> collections.Counter:
    """The samples each process of a run trained on: the first `per_process` it read (the loader reads ahead)."""
    seen = collections.Counter()
    for path in glob.glob(os.path.join(log_dir, "*.txt")):
        lines = open(path).read().splitlines()
        assert len(lines) >= per_process, (path, len(lines), per_process)
        seen.update(lines[:per_process])
    return seen


def test_a_run_resumed_on_another_topology_trains_on_the_same_samples(tmp_path, pipeline_run):
    steps, stop_at = 12, 6  # 16 samples a step before and after: 1 process x 16, then 2 x 4 x 2 accumulated
    common = ["--max-steps", str(steps), "--checkpoint-every-n-steps", "3", "--validate-every-n-steps", "4",
              "--log-every-n-steps", "1", "--no-packing"]  # grouped by length: the layout must survive the resume
    for name in ("whole", "first", "second"):
        os.makedirs(tmp_path / name)
    run(job_args(pipeline_run, tmp_path / "whole", *common), SAMPLES_LOG=tmp_path / "whole")
    run(job_args(pipeline_run, tmp_path / "job", *common), -9, KILL_AT_STEP=stop_at, SAMPLES_LOG=tmp_path / "first")
    resumed = run(job_args(pipeline_run, tmp_path / "job", *common, "--devices", "2", "--strategy", "ddp",
                           "--batch-size", "4", "--accumulate-grad-batches", "2"), SAMPLES_LOG=tmp_path / "second")
    assert "resuming the training data at sample 96 " in resumed.stderr and "now 2 x 4 x 2" in resumed.stderr
    whole = trained_samples(tmp_path / "whole", steps * 16)
    assert trained_samples(tmp_path / "first", stop_at * 16) + \
        trained_samples(tmp_path / "second", (steps - stop_at) * 8) == whole
    assert final_state(tmp_path / "job")["seen"][1] == steps * 16
    # Validations stay on the step grid after the change of accumulation, and the model is the same one
    assert [s for s, _ in scalars(tmp_path / "job", "val/loss")] == [s for s, _ in scalars(tmp_path / "whole", "val/loss")]
    a, b = (json.load(open(tmp_path / j / "final_metrics.json")) for j in ("whole", "job"))
    # the same samples and steps, summed in another order (2 ranks x 2 batches against 1 x 16): float drift of about
    # 1e-3 after 6 steps (1.3e-3 with the unigram output bias, under 1e-3 with a zero one); the samples, the steps
    # and the validation grid are checked exactly above
    assert abs(a["val_loss"] - b["val_loss"]) < 3e-3 and a["train_tokens"] == b["train_tokens"], (a, b)


def test_a_changed_seed_or_training_data_is_refused(tmp_path, pipeline_run):
    files = text_files(os.path.join(pipeline_run["corpus"], "train"), "train")
    identity = {"seed": 42, "train_data": files_fingerprint(files)}
    cfg = TrainingConfig(job_dir=str(tmp_path / "job"), train_path="", val_path="")
    prepare_job_dir(cfg, identity)  # a run in progress
    with pytest.raises(UsageError, match=r"holds a run with a different seed; .* --no-resume"):
        prepare_job_dir(cfg, identity | {"seed": 7})
    moved = tmp_path / "moved"
    shutil.copytree(os.path.dirname(files[0]), moved)
    assert files_fingerprint(text_files(str(moved), "train")) == identity["train_data"]  # moving data is fine
    with open(next(moved.glob("*.txt")), "a") as f:
        f.write("one more product title\n")
    with pytest.raises(UsageError, match="different train_data;"):
        prepare_job_dir(cfg, identity | {"train_data": files_fingerprint(text_files(str(moved), "train"))})


@pytest.mark.parametrize("torn", ['{"identity": {"seed": 4', "[]", "\xff"])
def test_a_torn_run_config_is_refused_and_no_resume_archives_it(tmp_path, torn):
    cfg = TrainingConfig(job_dir=str(tmp_path / "job"), train_path="", val_path="")
    os.makedirs(cfg.job_dir)
    (tmp_path / "job" / "run_config.json").write_bytes(torn.encode("latin-1"))
    with pytest.raises(UsageError, match=r"cannot read .*run_config.json .* no checkpoint to resume from: delete it, "
                                         r"or pass --no-resume to archive it"):
        prepare_job_dir(cfg, {"seed": 42})
    assert (tmp_path / "job" / "run_config.json").read_bytes() == torn.encode("latin-1")  # left as it was
    prepare_job_dir(TrainingConfig(job_dir=cfg.job_dir, train_path="", val_path="", resume=False), {"seed": 42})
    archived = glob.glob(str(tmp_path / "job" / "previous-*" / "run_config.json"))
    assert [open(p, "rb").read() for p in archived] == [torn.encode("latin-1")]
    assert json.load(open(tmp_path / "job" / "run_config.json"))["identity"] == {"seed": 42}


def test_a_torn_run_config_beside_a_checkpoint_says_how_to_resume_from_it(tmp_path):
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "last.ckpt").write_bytes(b"an intact checkpoint")
    (job / "run_config.json").write_text('{"identity": {"seed": 4')
    cfg = TrainingConfig(job_dir=str(job), train_path="", val_path="")
    with pytest.raises(UsageError, match=r"cannot read .*run_config.json .*; to resume from .*last.ckpt, restore "
                                         r"run_config.json from a copy, or delete it and re-run .*or pass --no-resume"):
        prepare_job_dir(cfg, {"seed": 42})
    os.remove(job / "run_config.json")  # as the error says
    assert prepare_job_dir(cfg, {"seed": 42}) == str(job / "checkpoints" / "last.ckpt")
    assert json.load(open(job / "run_config.json"))["identity"] == {"seed": 42}
