"""Learning-rate schedules laid out over a budget of steps, of training time, or both."""
import math
from dataclasses import dataclass

SCHEDULES = ("linear", "cosine", "wsd", "constant")
WARMUP_CAP = 0.1  # --warmup-steps never takes more than this share of the budget


@dataclass(frozen=True)
class Schedule:
    """The learning rate's multiplier along the run.

    Progress is whichever is further along: steps done of `max_steps`, or training seconds of
    `max_seconds` (Cramming's budget schedules), so a `--max-time` run warms up early and ends its decay
    when the clock stops it. Warmup is linear, over `warmup_ratio` of the budget or over `warmup_steps`
    (at most WARMUP_CAP of the budget); then `linear` and `cosine` decay to 0 over the rest, `wsd` holds
    the peak and decays linearly to 0 over the last `decay_ratio`, `constant` holds it.
    """

    name: str = "linear"
    max_steps: int | None = None
    max_seconds: float | None = None
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None
    decay_ratio: float = 0.2

    def progress(self, step: int, seconds: float) -> float:
        by_steps = step / self.max_steps if self.max_steps else 0.0
        by_time = seconds / self.max_seconds if self.max_seconds else 0.0
        return min(1.0, max(by_steps, by_time))

    def factor(self, step: int, seconds: float) -> float:
        """Multiplier of the peak rate for the optimizer step after `step` steps and `seconds` of training."""
        p = self.progress(step, seconds)
        if self.warmup_steps is not None:  # by steps, cut short by the cap; decay is laid over the whole budget
            warm = 1.0 if self.warmup_steps == 0 else max(step / self.warmup_steps, p / WARMUP_CAP)
            start = 0.0
        else:
            warm = p / self.warmup_ratio if self.warmup_ratio else 1.0
            start = self.warmup_ratio
        t = min(1.0, max(0.0, (p - start) / (1.0 - start)))
        if self.name == "linear":
            decay = 1.0 - t
        elif self.name == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * t))
        elif self.name == "wsd":
            decay = (1.0 - p) / self.decay_ratio if self.decay_ratio else 1.0
        else:
            decay = 1.0
        return max(0.0, min(1.0, warm, decay))
