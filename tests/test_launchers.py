"""Training under the launchers users run it with: Lightning's own, torchrun on one node, and torchrun
on two nodes (here two torchrun processes on loopback, sharing the job directory as a shared filesystem)."""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys

from conftest import REPO
from test_exact_resume import job_args, run

COMMON = ["--max-steps", "4", "--validate-every-n-steps", "4", "--batch-size", "8", "--strategy", "ddp",
          "--dropout", "0"]


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


def test_torchrun_and_two_nodes_train_as_lightnings_launcher(tmp_path, pipeline_run):
    run(job_args(pipeline_run, tmp_path / "lightning", *COMMON, "--devices", "2"))
    # An earlier run in the job directory: --no-resume archives it once, whichever rank starts first
    shutil.copytree(tmp_path / "lightning", tmp_path / "torchrun", ignore=shutil.ignore_patterns("cache", "model"))
    finish(torchrun(["--standalone", "--nproc-per-node", "2"],
                    job_args(pipeline_run, tmp_path / "torchrun", *COMMON, "--devices", "2", "--no-resume")))
    port = str(free_port())
    finish(*(torchrun(["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--master-addr",
                       "127.0.0.1", "--master-port", port],
                      job_args(pipeline_run, tmp_path / "nodes", *COMMON, "--devices", "1", "--num-nodes", "2"))
             for node in (0, 1)))
    losses = {j: json.load(open(tmp_path / j / "final_metrics.json"))["val_loss"] for j in ("lightning", "torchrun", "nodes")}
    assert max(losses.values()) - min(losses.values()) < 1e-4, losses
    archives = glob.glob(str(tmp_path / "torchrun" / "previous-*"))
    assert len(archives) == 1 and sorted(os.listdir(archives[0])) == ["checkpoints", "final_metrics.json",
                                                                       "run_config.json", "tensorboard"]
    for job in ("lightning", "torchrun", "nodes"):
        assert sorted(os.listdir(tmp_path / job / "checkpoints")) == ["last.ckpt"]
