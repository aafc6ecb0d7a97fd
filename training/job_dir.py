"""The job directory: create it, archive an earlier run, find the checkpoint to resume, refuse a different run's."""
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from typing import Any

from common import UsageError, write_json_atomic
from training.config import RUN_IDENTITY, TrainingConfig

log = logging.getLogger("training")


def resume_checkpoint(cfg: TrainingConfig) -> str | None:
    """JOB/checkpoints/last.ckpt when this run resumes from it; only reads the job directory."""
    last = os.path.join(cfg.job_dir, "checkpoints", "last.ckpt")
    if cfg.resume is False or not os.path.isfile(last):
        return None
    return last


def read_run_config(job_dir: str) -> dict[str, Any] | None:
    """JOB/run_config.json as the last run wrote it, or None when there is none."""
    path = os.path.join(job_dir, "run_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
        if not isinstance(run, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        last = os.path.join(job_dir, "checkpoints", "last.ckpt")
        if not os.path.isfile(last):
            raise UsageError(f"cannot read {path} ({e}) and there is no checkpoint to resume from: delete it, or pass "
                             "--no-resume to archive it, to start over; or use another --job-dir") from None
        # --no-resume alone would archive a last.ckpt that is likely intact: say first how to go on from it.
        raise UsageError(f"cannot read {path} ({e}); to resume from {last}, restore run_config.json from a copy, or "
                         "delete it and re-run with the earlier run's flags (its --batch-size, --lr and "
                         "--mlm-probability are then not carried over, nor its seed, model and data checked); "
                         "or pass --no-resume to archive that run and start over, or use another --job-dir") from None
    return run


def check_job_dir(cfg: TrainingConfig, identity: dict[str, Any]) -> str | None:
    """The job directory's refusals; return the checkpoint to resume from, if any. Every rank runs them before
    the process group exists, so a refusal ends every rank with the same line instead of leaving the others
    waiting for rank 0 in it. Writes only a probe file."""
    try:
        os.makedirs(cfg.job_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=cfg.job_dir).close()  # a unique probe: processes never collide
    except OSError as e:
        raise UsageError(f"cannot write to --job-dir {cfg.job_dir!r} ({e.strerror}); choose a writable directory") from None
    if cfg.resume is False:  # rank 0 archives what is there, unread: torn or not
        return None
    last = os.path.join(cfg.job_dir, "checkpoints", "last.ckpt")
    resume_from = resume_checkpoint(cfg)
    if cfg.resume and resume_from is None:
        raise UsageError(f"--resume given but {last!r} does not exist; drop --resume to start a new run")
    previous = read_run_config(cfg.job_dir)
    if previous:
        changed = [k for k in RUN_IDENTITY if k in previous.get("identity", {})
                   and previous["identity"][k] != identity.get(k)]
        if changed:
            raise UsageError(
                f"--job-dir {cfg.job_dir!r} holds a run with a different {', '.join(changed)}; "
                "use another --job-dir, or --no-resume to archive that run and start over"
            )
    return resume_from


def prepare_job_dir(cfg: TrainingConfig, identity: dict[str, Any]) -> str | None:
    """check_job_dir, then record_job_dir: one process's whole preparation; return the checkpoint to resume from."""
    resume_from = check_job_dir(cfg, identity)
    record_job_dir(cfg, identity, resume_from)
    return resume_from


def record_job_dir(cfg: TrainingConfig, identity: dict[str, Any], resume_from: str | None,
                   notes: dict[str, Any] | None = None) -> None:
    """Archive an earlier run on --no-resume and record this one, with `notes` (global rank 0 only, once
    check_job_dir passed)."""
    last = os.path.join(cfg.job_dir, "checkpoints", "last.ckpt")
    run_file = os.path.join(cfg.job_dir, "run_config.json")
    if cfg.resume is False and (os.path.exists(last) or os.path.exists(run_file)):  # archived unread: torn or not
        archive = tempfile.mkdtemp(prefix=f"previous-{time.strftime('%Y%m%d-%H%M%S')}-", dir=cfg.job_dir)
        for name in ("checkpoints", "tensorboard", "model", "final_metrics.json", "run_config.json"):
            if os.path.exists(os.path.join(cfg.job_dir, name)):
                shutil.move(os.path.join(cfg.job_dir, name), archive)
        log.warning("--no-resume: the earlier run in %s was moved to %s", cfg.job_dir, archive)
    # Whole or not at all: the other ranks of a resumed run read it as rank 0 writes.
    write_json_atomic(run_file, {"identity": identity, "config": asdict(cfg), **(notes or {})})
    if resume_from:
        log.warning("resuming from %s", resume_from)
