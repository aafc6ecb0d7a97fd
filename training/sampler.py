"""The training order: one endless stream of (epoch, index), shuffled by the seed, shared out over ranks."""
import numpy as np
from torch.utils.data import Sampler


def group_by_length(order: np.ndarray, lengths: np.ndarray, batch: int, rng: np.random.Generator,
                    pool: int = 50) -> np.ndarray:
    """Sort each run of `pool` batches by length, then shuffle whole batches (as Hugging Face's
    LengthGroupedSampler): batches of similar lengths, in random order. A last partial batch stays last
    so that every other one keeps its boundaries. Sorts `order` in place, a slice of runs at a time,
    so that the only copy it makes is the shuffled result (20M sentences: 80 MB, temporaries ~25 MB)."""
    run = batch * pool
    in_runs = len(order) // run * run

    def longest_first(ids: np.ndarray) -> np.ndarray:  # an ascending sort key, two bytes a sentence
        return np.iinfo(np.uint16).max - lengths[ids].astype(np.uint16)

    step = max(1, (1 << 20) // run) * run
    for start in range(0, in_runs, step):  # stable sorts: equal lengths keep their shuffled order
        runs = order[start : min(start + step, in_runs)].reshape(-1, run)
        runs[:] = np.take_along_axis(runs, np.argsort(longest_first(runs), axis=1, kind="stable"), axis=1)
    tail = order[in_runs:]
    tail[:] = tail[np.argsort(longest_first(tail), kind="stable")]
    full = len(order) // batch
    grouped = np.empty_like(order)
    np.take(order[: full * batch].reshape(full, batch), rng.permutation(full), axis=0,
            out=grouped[: full * batch].reshape(full, batch))
    grouped[full * batch :] = order[full * batch :]
    return grouped


class TrainingStream(Sampler[tuple[int, int]]):
    """The training samples as one endless stream of (epoch, index): epoch after epoch, each shuffled
    with (seed, epoch), so that position p of the stream depends only on the seed and the data.

    Rank r of `world_size` takes positions start + r, start + r + world_size, ...: a step of
    `world_size` batches of B takes exactly the next B x world_size positions, whatever B and the
    number of ranks, so a run resumed at `start` (the samples already consumed) on other hardware or
    with another batch size goes on with the very samples the first run would have taken, none
    skipped or repeated. No epoch ever ends for Lightning, so no rank pads its share and no step is
    cut short at an epoch's end. With `lengths`, each run of `group` positions (the global batch the
    job started with, kept across resumes) holds sentences of similar length (see group_by_length).
    Each epoch's order is a numpy array of 32-bit indices: 20M sentences cost 80 MB.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 lengths: np.ndarray | None = None, group: int = 1) -> None:
        self.n, self.seed, self.rank, self.world_size, self.start = n, seed, rank, world_size, start
        self.lengths, self.group = lengths, group

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        order = np.arange(self.n, dtype=np.int32 if self.n < 2**31 else np.int64)
        rng.shuffle(order)
        if self.lengths is not None:
            order = group_by_length(order, self.lengths, self.group, rng)
        return order

    def __iter__(self):
        position, epoch, order = self.start + self.rank, -1, None
        while True:
            e, k = divmod(position, self.n)
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            yield epoch, int(order[k])
            position += self.world_size
