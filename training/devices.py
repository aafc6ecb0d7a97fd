"""Every choice that depends on the device, made in one place: precision, optimizer flags, attention,
data loading workers, pinning, TF32, and the peak FLOP/s that MFU divides by."""
import logging
import os
import time
from dataclasses import dataclass

import torch

log = logging.getLogger("training")

# Strategies a test in tests/ runs; others are passed to Lightning with a warning. The presets (at most
# ~50M parameters) fit on one GPU many times over, so data parallelism (DDP) is all they need.
TESTED_STRATEGIES = ("auto", "ddp")

# Dense (no sparsity) peak FLOP/s of Hopper chips, from NVIDIA's H100 and H200 datasheets. Lightning's
# table lists H100 NVL with its sparsity figures and does not recognise the name "NVIDIA H200".
HOPPER_PEAK_FLOPS = {  # chip: (bf16 and fp16, tf32)
    "h100 sxm": (989.4e12, 494.7e12),
    "h100 pcie": (756.0e12, 378.0e12),
    "h100 nvl": (835.5e12, 417.8e12),
    "h200 sxm": (989.4e12, 494.7e12),
    "h200 nvl": (835.5e12, 417.8e12),
}


@dataclass(frozen=True)
class DevicePlan:
    """What training uses on one kind of device (see `plan_for_device`)."""
    device: str  # "cuda", "cpu" or "mps"
    precision: str  # a Lightning precision
    fused_adamw: bool  # one kernel for the whole update; it also skips a non-finite step without a host sync
    attention: str  # transformers' attention implementation: "sdpa" or "eager"
    num_workers: int  # dataloader worker processes
    pin_memory: bool
    tf32: bool  # TensorFloat-32 for float32 matrix products (Ampere and later)
    check_every_n_steps: int  # how often the host reads device-side counters (non-finite steps) back
    batch_size: int = 32  # sequences per step when --batch-size is not given


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_bf16_speedup(size: int = 512, repeats: int = 5) -> float:
    """How many times faster a bf16-autocast matrix product runs than a float32 one on this CPU
    (best of `repeats`, a few milliseconds each): the flag alone does not say that bf16 pays."""
    a, b = torch.randn(4 * size, size), torch.randn(size, 2 * size)

    def best(bf16: bool) -> float:
        times = []
        for _ in range(repeats + 1):  # the first call warms up the kernel
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                a @ b
            times.append(time.perf_counter() - start)
        return min(times[1:])

    return best(False) / best(True)


def device_type(accelerator: str) -> str:
    """The torch device type Lightning will train on for this --accelerator."""
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator in ("cpu", "mps"):
        return accelerator
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def cpu_precision() -> str:
    """bf16-mixed on CPUs whose bf16 matrix products measure at least 1.2x faster than float32."""
    if not cpu_has_bf16():
        return "32-true"
    speedup = cpu_bf16_speedup()
    log.info("bf16 on this CPU: %.1fx the float32 matrix speed", speedup)
    return "bf16-mixed" if speedup >= 1.2 else "32-true"


def plan_for_device(device: str, precision: str = "auto", attention: str = "auto", num_workers: int | None = None,
                    capability: tuple[int, int] | None = None, processes_per_node: int = 1,
                    log_every_n_steps: int = 10) -> DevicePlan:
    """The plan for training on `device` ("cuda", "cpu" or "mps"); explicit choices are kept as given.

    CUDA: batches of 32 sequences, bf16-mixed from Ampere on (compute capability 8.0; before it bf16 is emulated, so 16-mixed),
    fused AdamW unless a gradient scaler (16-mixed) must unscale first, SDPA, TF32, pinned memory and a
    few workers to collate while the GPU computes. CPU: batches of 8, bf16 only where it measures faster, fused AdamW, eager
    attention (faster than SDPA's CPU kernels for 128-token sequences), no workers (they would take
    cores from the computation).
    """
    attention = default_attention(device) if attention == "auto" else attention
    if device != "cuda":
        if precision == "auto":
            precision = cpu_precision() if device == "cpu" else "32-true"
        elif device == "cpu" and scaled(precision):
            precision = "bf16-mixed"  # what Lightning runs for float16 AMP on a CPU (it has no float16 autocast)
        # A CPU computes a batch in about the same time per token whatever its size, so small batches give
        # more optimizer steps for the same tokens: on real titles, 8 sequences a step reached a lower
        # loss than 32 within a time budget (docs/benchmarks.md). GPUs need larger batches to be busy.
        # Fused AdamW on CPUs: one pass over the weights instead of a dozen (3x less optimizer time; the
        # embedding matrix is most of tiny's weights), except under a gradient scaler, as on CUDA; MPS keeps the
        # foreach one.
        return DevicePlan(device, precision, fused_adamw=device == "cpu" and not scaled(precision), attention=attention,
                          num_workers=num_workers or 0, pin_memory=False, tf32=False, check_every_n_steps=1,
                          batch_size=8 if device == "cpu" else 32)
    if capability is None:
        capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else (8, 0)
    ampere = capability >= (8, 0)
    if precision == "auto":
        precision = "bf16-mixed" if ampere else "16-mixed"
    if num_workers is None:
        # Collating a batch costs the host ~1-2 ms per 32 sequences of 128 tokens; workers do it while the
        # GPU computes. Four keep ahead of any preset's step; leave a core per process for the training loop.
        num_workers = max(1, min(4, (os.cpu_count() or 2) // max(processes_per_node, 1) - 1))
    return DevicePlan(
        device, precision, fused_adamw=not scaled(precision),
        attention=attention, num_workers=num_workers, pin_memory=True, tf32=ampere,
        check_every_n_steps=max(log_every_n_steps, 1),
    )


def device_kind(plan: DevicePlan) -> str:
    """The row of config.SIZE_BY_BUDGET for this plan: "cpu" (float32), "cpu-bf16" or "gpu" (CUDA, MPS)."""
    if plan.device != "cpu":
        return "gpu"
    return "cpu-bf16" if "bf16" in plan.precision else "cpu"


def scaled(precision: str) -> bool:
    """True for float16 mixed precision: a gradient scaler unscales first, so the fused AdamW kernel is not used."""
    return precision in ("16-mixed", "16")


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """The dtype of sums and counts on `device`: float64, but float32 on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def default_attention(device: str) -> str:
    """SDPA on accelerators; eager on CPUs, where SDPA's kernels measured 1.3-1.6x slower at 128 tokens."""
    return "eager" if device == "cpu" else "sdpa"


def cpu_peak_flops(precision: str, threads: int | None = None, cpuinfo: str | None = None,
                   max_khz: int | None = None) -> tuple[float, str] | None:
    """Peak dense FLOP/s of the cores torch computes on, for MFU, and how it was counted; None off x86.

    threads x 2 FMA units x lanes x 2 (a fused multiply-add) x the clock: float32 lanes are 16 with AVX-512, 8
    with AVX2; bf16 (bf16-mixed) doubles them with AVX512-BF16 and counts AMX tiles' 1,024 products a cycle.
    AMD's Zen 3 and 4 (family 25) run AVX-512 on 256-bit units, so count 8 lanes there. The clock is cpufreq's
    maximum, else /proc/cpuinfo's "cpu MHz". An estimate (some CPUs have one AVX-512 FMA unit, or run AVX-512 at a
    lower clock); --peak-tflops overrides.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
        if max_khz is None:
            try:
                with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
                    max_khz = int(f.read())
            except (OSError, ValueError):
                pass

    def field(name: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith(name)), "")

    flags = set(field("flags").split())
    if max_khz is None:
        mhz = [float(line.split(":")[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
        max_khz = int(max(mhz) * 1000) if mhz else None
    half_width = field("vendor_id") == "AuthenticAMD" and field("cpu family") == "25"
    lanes = 16 if "avx512f" in flags and not half_width else 8 if "avx2" in flags and "fma" in flags else 0
    if not lanes or not max_khz:
        return None
    threads = threads or torch.get_num_threads()
    per_cycle, what = 2 * lanes * 2, f"{lanes} float32 lanes"
    if "bf16" in precision and "amx_bf16" in flags:
        per_cycle, what = 2 * 1024, "AMX bf16 tiles"
    elif "bf16" in precision and "avx512_bf16" in flags:
        per_cycle, what = 2 * per_cycle, f"{2 * lanes} bf16 lanes"
    ghz = max_khz / 1e6
    return threads * per_cycle * ghz * 1e9, f"{threads} threads x 2 FMA units x {what} x 2 x {ghz:.2f} GHz"


def peak_flops(device: torch.device, precision: str, override_tflops: float | None = None) -> tuple[float, str] | None:
    """Peak dense FLOP/s of the device at this precision, for MFU, and how it was found; None where unknown
    (unlisted GPUs, MPS, CPUs other than x86)."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type == "cpu":
        return cpu_peak_flops(precision)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    half = "16" in precision
    tf32 = not half and torch.get_float32_matmul_precision() != "highest"
    chip = hopper_chip(name)
    if chip is not None and (half or tf32):
        return HOPPER_PEAK_FLOPS[chip][0 if half else 1], f"{chip}'s datasheet"
    from lightning_fabric.utilities.throughput import get_available_flops

    dtype = torch.bfloat16 if "bf16" in precision else (torch.float16 if half else ("tfloat32" if tf32 else torch.float32))
    flops = get_available_flops(device, dtype)
    return (flops, "Lightning's table") if flops else None


def hopper_chip(device_name: str) -> str | None:
    """'h100 sxm', 'h100 pcie', 'h100 nvl', 'h200 sxm' or 'h200 nvl' from a CUDA device name, else None."""
    name = device_name.lower()
    if "h200" in name:
        return "h200 nvl" if "nvl" in name else "h200 sxm"
    if "h100" in name:
        if "nvl" in name:
            return "h100 nvl"
        return "h100 pcie" if "pcie" in name or "hbm2e" in name else "h100 sxm"
    return None


def apply_plan(plan: DevicePlan) -> None:
    """Process-wide switches of the plan: TF32 matrix products on Ampere and later GPUs."""
    if plan.tf32:
        # The legacy switch on purpose: Lightning reads torch.get_float32_matmul_precision() on CUDA, which
        # raises once the newer fp32_precision API has been used in the same process.
        torch.set_float32_matmul_precision("high")


def check_strategy(strategy: str) -> None:
    """Warn, in one line, about a strategy that no test of this project runs."""
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    if name not in TESTED_STRATEGIES:
        log.warning("--strategy %s is not tested with this pipeline (tested: %s); its models need no sharding, "
                    "use --strategy ddp for several devices", name, ", ".join(TESTED_STRATEGIES))
