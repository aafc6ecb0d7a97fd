"""The memory budget of step 2: parsing `--memory-budget`, its default from the machine, printing sizes."""
import os
import re

from common import UsageError

MiB, GiB = 1 << 20, 1 << 30
UNITS = {"": MiB, "b": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40,
         "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_memory_budget(text: str) -> int:
    """Bytes from '4GiB', '512MiB', '2G' (binary, like `free -h`), '2GB' (decimal) or a plain number of MiB."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?b?|[kmgt]ib)\s*", text.lower())
    budget = int(float(match[1]) * UNITS[match[2].replace("ib", "")]) if match else 0
    if budget <= 0:
        raise UsageError(f"--memory-budget {text!r} is not a positive size; pass e.g. 4GiB, 512MiB, 2G or a number "
                         "of MiB")
    return budget


def _cgroup_limit() -> int | None:
    """The container's memory limit (cgroup v2 or v1), which /proc/meminfo does not show."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:  # "max", or v1's huge number, means no limit
            return int(value)
    return None


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo: free memory plus the cache the kernel can drop (Linux only; None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_memory_budget() -> int:
    """Half of the machine's memory, or of what the container allows when that is less.

    Not of what is free now: the budget decides the sample, so a rerun on the same machine must get the
    same one (`available_memory` is checked separately, for a warning).
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # Linux and macOS
    except (AttributeError, ValueError, OSError):
        total = None
    known = [m for m in (total, _cgroup_limit()) if m]
    if not known:
        return 4 * GiB
    half = min(known) // 2
    return half // GiB * GiB if half >= 2 * GiB else half // MiB * MiB


def format_bytes(n: float) -> str:
    """'4.8 GiB', '300 MiB', '12 KiB', '512 B'."""
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:,.0f} {unit}"
    return f"{n:.0f} B"
