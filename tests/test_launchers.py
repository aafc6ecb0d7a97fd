"""DDP under the launchers users run it with equals one device on the same samples: Lightning's own
launcher (also accumulating), torchrun on one node, and torchrun on two nodes (here two torchrun processes
on loopback, sharing the job directory as a shared filesystem)."""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys

from conftest import REPO
from test_exact_resume import final_state, job_args, run

# Fewer steps than an epoch; every run takes the same 16 samples a step
COMMON = ["--max-steps", "3", "--validate-every-n-steps", "3", "--dropout", "0", "--lr", "2e-3"]
DDP = [*COMMON, "--batch-size", "8", "--strategy", "ddp"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launcher: list[str], args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher, "training/run_training.py",
                             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*procs: subprocess.Popen) -> None:
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]


def test_ddp_under_every_launcher_equals_one_device(tmp_path, pipeline_run):
    run(job_args(pipeline_run, tmp_path / "one", *COMMON, "--batch-size", "16", "--devices", "1"))
    run(job_args(pipeline_run, tmp_path / "lightning", *DDP, "--devices", "2"))
    run(job_args(pipeline_run, tmp_path / "accumulating", *COMMON, "--batch-size", "4", "--accumulate-grad-batches",
                 "2", "--strategy", "ddp", "--devices", "2"))
    # An earlier run in the job directory: --no-resume archives it once, whichever rank starts first
    shutil.copytree(tmp_path / "lightning", tmp_path / "torchrun", ignore=shutil.ignore_patterns("cache", "model"))
    finish(torchrun(["--standalone", "--nproc-per-node", "2"],
                    job_args(pipeline_run, tmp_path / "torchrun", *DDP, "--devices", "2", "--no-resume")))
    port = str(free_port())
    finish(*(torchrun(["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--master-addr",
                       "127.0.0.1", "--master-port", port],
                      job_args(pipeline_run, tmp_path / "nodes", *DDP, "--devices", "1", "--num-nodes", "2"))
             for node in (0, 1)))
    jobs = ("one", "lightning", "accumulating", "torchrun", "nodes")
    metrics = {j: json.load(open(tmp_path / j / "final_metrics.json")) for j in jobs}
    for job in jobs:
        assert abs(metrics[job]["val_loss"] - metrics["one"]["val_loss"]) < 1e-4, metrics
        assert metrics[job]["train_tokens"] == metrics["one"]["train_tokens"], "the ranks shared one device's samples"
        assert sorted(os.listdir(tmp_path / job / "checkpoints")) == ["last.ckpt"]
    a, b = final_state(tmp_path / "one")["state_dict"], final_state(tmp_path / "torchrun")["state_dict"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    archives = glob.glob(str(tmp_path / "torchrun" / "previous-*"))
    assert len(archives) == 1 and sorted(os.listdir(archives[0])) == ["checkpoints", "final_metrics.json",
                                                                       "run_config.json", "tensorboard"]
    card = open(tmp_path / "accumulating" / "model" / "README.md").read()
    assert "- effective_batch_size: 16" in card


def test_a_refusal_ends_every_rank_under_torchrun_and_srun(tmp_path, pipeline_run):
    """Refusals rank 0 used to check alone left the other ranks waiting for it in the process group."""
    changed = tmp_path / "changed"  # a job directory of a run with another --seed
    changed.mkdir()
    (changed / "run_config.json").write_text('{"identity": {"seed": 7}, "config": {}}')
    torn = tmp_path / "torn"  # an unreadable checkpoint
    (torn / "checkpoints").mkdir(parents=True)
    (torn / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    launched = [torchrun(["--standalone", "--nproc-per-node", "2"],
                         job_args(pipeline_run, changed, *DDP, "--devices", "2"))]
    port = str(free_port())  # srun starts each process with its rank in the environment
    for rank in (0, 1):
        slurm = dict(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0",
                     SLURM_JOB_ID="4242", SLURM_JOB_NAME="lm", SLURM_NODELIST="127.0.0.1", MASTER_PORT=port)
        launched.append(subprocess.Popen([sys.executable, "training/run_training.py",
                                          *job_args(pipeline_run, torn, *DDP, "--devices", "2")], cwd=REPO,
                                         env=dict(os.environ, **slurm), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
    try:
        stderr = [proc.communicate(timeout=150)[1] for proc in launched]
    finally:
        for proc in launched:
            proc.kill()
    assert stderr[0].count("error: --job-dir") == 2 and "holds a run with a different seed" in stderr[0], stderr[0][-3000:]
    for proc, err in zip(launched[1:], stderr[1:]):
        assert proc.returncode == 2 and "error: cannot resume from" in err and "Traceback" not in err, err[-3000:]
