"""The Lightning data module: tokenises the splits once and serves masked-LM batches, resumable on any hardware."""
import logging
import os
import signal
from functools import partial

import pytorch_lightning as pl
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from common import UsageError
from training.masking import VALIDATION_MLM_PROBABILITY, MaskedLMCollator, pad_masked
from training.sampler import TrainingStream
from training.sequences import FixedMaskedSample, KeyedSamples, PackedBlocks, Sentences
from training.token_cache import encode_split, text_files
from training.trainer_setup import STOP_SIGNALS

log = logging.getLogger("training")


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start: a stop signal sent to the whole process group (a terminal's Ctrl+C, srun,
    kill -- -PGID) must not kill the workers mid-step, whatever the start method (spawn and forkserver start
    them with Python's own SIGINT handler, fork with the training process's); the training process saves
    and stops, and its workers with it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def start_worker_helpers() -> None:
    """Start multiprocessing's resource tracker (and, under forkserver, its server) for spawned or
    forkserver workers with the stop signals ignored, which they inherit: SIGUSR1 or SIGTERM sent to the
    process group would otherwise kill them, and the run would end with their tracebacks. Before anything
    else starts the tracker (any tqdm bar does)."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    import torch.multiprocessing

    method = torch.multiprocessing.get_start_method()
    if method == "fork":
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        multiprocessing.resource_tracker.ensure_running()
        if method == "forkserver":
            multiprocessing.forkserver.ensure_running()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class MaskedLMDataModule(pl.LightningDataModule):
    """Train and validation splits, tokenised once and cached, served as masked-LM batches."""

    def __init__(
        self, train_path: str, val_path: str, tokenizer: PreTrainedTokenizerBase, tokenizer_file: str,
        cache_dir: str, max_seq_length: int = 128, batch_size: int = 32, mlm_probability: float = 0.15,
        packing: bool = True, num_workers: int = 0, seed: int = 42, attend_across_sentences: bool = False,
        pin_memory: bool = False, max_val_sentences: int = 10_000, progress: bool = False, mask_rule: str = "80-10-10",
    ) -> None:
        super().__init__()
        self.train_files = text_files(train_path, "--path-to-train-set")
        self.val_files = text_files(val_path, "--path-to-val-set")
        if {os.path.realpath(f) for f in self.train_files} & {os.path.realpath(f) for f in self.val_files}:
            raise UsageError("--path-to-train-set and --path-to-val-set share files; pass step 1's train and validation directories")
        self.tokenizer, self.tokenizer_file, self.cache_dir = tokenizer, tokenizer_file, cache_dir
        self.max_seq_length, self.batch_size, self.mlm_probability = max_seq_length, batch_size, mlm_probability
        self.packing, self.num_workers, self.seed, self.pin_memory = packing, num_workers, seed, pin_memory
        self.max_val_sentences, self.progress, self.mask_rule = max_val_sentences, progress, mask_rule
        self.attend_across_sentences = attend_across_sentences
        self.resume_state: dict[str, int] = {}  # restored from a checkpoint (see state_dict)
        self.prepare_data_per_node = False  # global rank 0 tokenises: the job directory is shared by all nodes
        self.group = batch_size

    def prepare_data(self) -> None:
        if getattr(self, "train_set", None) is not None:  # the final validate calls this again
            return
        for name, files in (("train", self.train_files), ("validation", self.val_files)):
            encode_split(files, self.tokenizer_file, self.cache_dir, self.tokenizer.eos_token_id, self.progress, name)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:  # fit, then the final validate: set up once
            return
        eos, bos = self.tokenizer.eos_token_id, self.tokenizer.bos_token_id
        # prepare_data built or found these (and said so); here they are only opened
        train = encode_split(self.train_files, self.tokenizer_file, self.cache_dir, eos, name="train", quiet=True)
        val = encode_split(self.val_files, self.tokenizer_file, self.cache_dir, eos, name="validation", quiet=True)
        if len(train) == 0 or len(val) == 0:
            raise UsageError("the training or validation split is empty; run step 1 on more data")
        self.train_tokens, self.train_split = int(train.tokens.size), train
        self.train_set = (
            PackedBlocks(train, self.max_seq_length, bos) if self.packing
            else Sentences(train, self.max_seq_length, bos, eos)
        )
        val_collator = MaskedLMCollator(self.tokenizer, VALIDATION_MLM_PROBABILITY)
        self.val_set = FixedMaskedSample(val, self.max_seq_length, bos, eos, val_collator, self.seed,
                                         self.max_val_sentences)
        self.val_sentences = len(val)
        _, world = self._rank()
        if len(self.val_set) < world:  # the same on every rank: all refuse, none waits for the others' sums
            raise UsageError(f"the validation sample has {len(self.val_set)} sentence(s) for {world} processes; "
                             "each must score at least one: raise --max-val-sentences (0 = all) or validate on "
                             "more sentences")
        log.info("validation: %s of %s sentences, fixed masks (seed %d)", f"{len(self.val_set):,}", f"{len(val):,}",
                 self.seed)  # by rank 0 alone, as every line of the training logger (training/job.py)
        self.train_collator = MaskedLMCollator(self.tokenizer, self.mlm_probability, mask_rule=self.mask_rule,
                                               packed=self.packing and not self.attend_across_sentences)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        saved = self.resume_state
        self.group = saved.get("group", self.batch_size * world)  # the stream's layout stays the job's first
        start = saved.get("samples", 0)
        if "batches" in saved:  # written before the stream (2026): batches per rank in an epoch of the same order
            start = saved.get("epoch", 0) * len(self.train_set) + min(saved["batches"] * self.group, len(self.train_set))
        self.trainer.lightning_module.samples_consumed = start
        if saved and rank == 0:
            epoch, k = divmod(start, len(self.train_set))
            log.warning("resuming the training data at sample %s (epoch %d, %s of %s), saved by %s x %s "
                        "sequences x %s accumulated, now %d x %d x %d", f"{start:,}", epoch, f"{k:,}",
                        f"{len(self.train_set):,}", saved.get("world", "?"), saved.get("batch", "?"),
                        saved.get("accumulate", "?"), world, self.batch_size, self.trainer.accumulate_grad_batches)
        lengths = None if self.packing else self.train_set.split.lengths()  # for grouping by length
        sampler = TrainingStream(len(self.train_set), self.seed, rank, world, start, lengths, self.group)
        self.train_loader = DataLoader(
            KeyedSamples(self.train_set, self.seed), batch_size=self.batch_size, sampler=sampler,
            collate_fn=self.train_collator, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory, worker_init_fn=ignore_stop_signals,
        )
        return self.train_loader

    def shutdown_workers(self) -> None:
        """End the training loader's workers. They ignore SIGTERM (see ignore_stop_signals), which is how
        Python's exit ends them, and Lightning leaves them running when a run stops during a validation."""
        iterator = getattr(getattr(self, "train_loader", None), "_iterator", None)  # torch's, with persistent workers
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank()  # each rank scores a disjoint part; the module sums over ranks
        return DataLoader(
            # 4x the training batch: no gradients to hold, and larger products ran 1.3x faster on a CPU.
            self.val_set, batch_size=4 * self.batch_size, sampler=range(rank, len(self.val_set), world),
            collate_fn=partial(pad_masked, pad_id=self.tokenizer.pad_token_id), num_workers=0,
        )

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the data (samples consumed, over all ranks) and the layout it was
        consumed in: saved in every checkpoint, so a resume continues there, on any hardware."""
        trainer = self.trainer
        return {"samples": trainer.lightning_module.samples_consumed, "group": self.group,
                "world": trainer.world_size, "batch": self.batch_size, "accumulate": trainer.accumulate_grad_batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.resume_state = state_dict
