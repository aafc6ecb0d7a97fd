"""Step 3 as training/run_training.py runs it, interrupted at a known point, for the resume tests.

Environment: KILL_AT_STEP=N kills every process of the run (all ranks) with SIGKILL right after the
checkpoint of step N is on disk; SIGNAL_AT_STEP=N with SIGNAL_RANK=R and SIGNAL=SIGTERM|SIGINT|SIGUSR1
(or several, comma-separated, sent in that order) sends that signal to global rank R alone as step N+1 begins (to the whole process group, dataloader workers
included, with SIGNAL_GROUP=1), or, with SIGNAL_AT_STEP=loader, as rank R builds its training dataloader
(after Lightning would have installed its own handlers); KILL_IN_EXPORT=1 kills the run when the model is
being exported; SAMPLES_LOG=DIR appends each training sample a process reads, as "epoch index", to
DIR/<pid>.txt. START_METHOD=fork|spawn|forkserver starts the dataloader workers that way.
"""
import os
import signal
import sys
import time

from common import run_main
from training import job, trainer_setup
from training.data_module import MaskedLMDataModule
from training.model import MaskedLMModule
from training.run_training import main
from training.sequences import KeyedSamples

env = os.environ
if env.get("KILL_AT_STEP"):
    save = trainer_setup.AtomicCheckpointIO.save_checkpoint

    def save_then_die(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        if checkpoint["global_step"] == int(env["KILL_AT_STEP"]):
            os.killpg(0, signal.SIGKILL)

    trainer_setup.AtomicCheckpointIO.save_checkpoint = save_then_die



def send_signal(rank: int) -> None:
    if rank == int(env.get("SIGNAL_RANK", 0)):
        for name in env.get("SIGNAL", "SIGTERM").split(","):
            signum = getattr(signal, name)
            os.killpg(0, signum) if env.get("SIGNAL_GROUP") else os.kill(os.getpid(), signum)


def report_workers(trainer) -> None:
    """Log how many dataloader workers outlived the signal (the run stops before it would need them)."""
    iterator = getattr(getattr(trainer.datamodule, "train_loader", None), "_iterator", None)
    workers = getattr(iterator, "_workers", [])
    time.sleep(3)  # for a signal to kill them: a spawned worker takes a while to die
    print(f"dataloader workers alive: {sum(w.is_alive() for w in workers)} of {len(workers)}", file=sys.stderr)


if env.get("SIGNAL_AT_STEP") == "loader":
    train_dataloader = MaskedLMDataModule.train_dataloader

    def signal_then_load(self):
        send_signal(self.trainer.global_rank)
        return train_dataloader(self)

    MaskedLMDataModule.train_dataloader = signal_then_load
elif env.get("SIGNAL_AT_STEP"):
    batch_start = MaskedLMModule.on_train_batch_start

    def signal_once(self, batch, batch_idx):
        if self.global_step == int(env["SIGNAL_AT_STEP"]) and not getattr(self, "_signalled", False):
            self._signalled = True
            send_signal(self.global_rank)
            if env.get("SIGNAL_GROUP"):
                report_workers(self.trainer)
        return batch_start(self, batch, batch_idx)

    MaskedLMModule.on_train_batch_start = signal_once

if env.get("KILL_IN_EXPORT"):
    def die(*args, **kwargs):
        os.killpg(0, signal.SIGKILL)

    job.export_model = die

if env.get("SAMPLES_LOG"):
    getitem = KeyedSamples.__getitem__

    def logged(self, index):
        with open(os.path.join(env["SAMPLES_LOG"], f"{os.getpid()}.txt"), "a") as f:
            f.write(f"{index[0]} {index[1]}\n")
        return getitem(self, index)

    KeyedSamples.__getitem__ = logged

if __name__ == "__main__":  # not in a spawned worker, which imports this file again
    if env.get("START_METHOD"):
        import torch.multiprocessing

        torch.multiprocessing.set_start_method(env["START_METHOD"])
    sys.exit(run_main(lambda: main(sys.argv[1:])))
