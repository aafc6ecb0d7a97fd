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


PROC_SELF = "/proc/self"
NO_LIMIT = 1 << 60  # v2 writes "max"; v1 a number near 2**63


def _cgroup_hierarchies() -> list[tuple[str, list[str], str]]:
    """(mount point, this process's cgroup below it, limit file name) for cgroup v2 and v1's memory controller.

    /proc/self/cgroup names the cgroup within each hierarchy; /proc/self/mountinfo says where that hierarchy
    is mounted and which of its cgroups the mount shows (a container without a cgroup namespace sees its own
    cgroup as the mount's root).
    """
    try:
        with open(f"{PROC_SELF}/cgroup") as f:
            cgroups = [line.rstrip("\n").split(":", 2) for line in f]
        with open(f"{PROC_SELF}/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return []
    found = []
    for fields in mounts:
        after = fields[fields.index("-") + 1 :]  # filesystem type, source, super options
        root, mount_point = fields[3], fields[4]
        if after[0] == "cgroup2":
            paths, limit_file = [c[2] for c in cgroups if len(c) == 3 and c[0] == "0" and c[1] == ""], "memory.max"
        elif after[0] == "cgroup" and "memory" in after[2].split(","):
            paths = [c[2] for c in cgroups if len(c) == 3 and "memory" in c[1].split(",")]
            limit_file = "memory.limit_in_bytes"
        else:
            continue
        for path in paths:
            relative = os.path.relpath(path, root).split(os.sep)
            below = [] if relative[0] in (os.curdir, os.pardir) else relative  # outside the mount: its root only
            found.append((mount_point, below, limit_file))
    return found


def _cgroup_limit() -> int | None:
    """The smallest memory limit on the way from this process's cgroup up to the root (cgroup v2 or v1), which
    /proc/meminfo does not show: a batch job's (SLURM, a systemd slice) is deeper in the tree than the root."""
    limits = []
    for mount_point, below, limit_file in _cgroup_hierarchies():
        for depth in range(len(below) + 1):
            try:
                with open(os.path.join(mount_point, *below[:depth], limit_file)) as f:
                    value = f.read().strip()
            except OSError:  # the root cgroup of v2 has no limit file
                continue
            if value.isdigit() and int(value) < NO_LIMIT:
                limits.append(int(value))
    return min(limits, default=None)


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
    """Half of the machine's memory, or of the process's cgroup memory limit (a job's, a container's) if less.

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
