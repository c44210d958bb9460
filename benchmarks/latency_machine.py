"""Facts about the machine a latency run is on: CPU, GPU, peak FLOP/s and versions.

Part of ``benchmarks/latency.py`` (see its docstring for what is timed and how).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import cv2
import onnxruntime as ort

from fexsdk import __version__ as FEXSDK_VERSION


#: Dense peak GFLOP/s (FP32, FP16 tensor cores) of common GPUs, from their data sheets.
GPU_PEAKS = (
    ("H200", 67_000, 989_000), ("H100 PCIe", 51_000, 756_000), ("H100", 67_000, 989_000),
    ("A100", 19_500, 312_000), ("L40S", 91_600, 362_000), ("L4", 30_300, 121_000), ("A10", 31_200, 125_000),
    ("T4", 8_100, 65_000), ("V100", 15_700, 125_000), ("RTX 4090", 82_600, 165_000), ("RTX 3090", 35_600, 71_000),
)


def _cpuinfo() -> list[dict[str, str]]:
    blocks, cur = [], {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if cur:
                        blocks.append(cur)
                    cur = {}
                elif ":" in line:
                    k, v = line.split(":", 1)
                    cur[k.strip()] = v.strip()
        if cur:
            blocks.append(cur)
    except OSError:
        pass
    return blocks


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def cpu_facts() -> dict[str, Any]:
    info = _cpuinfo()
    usable = usable_cpus()
    name = next((b["model name"] for b in info if "model name" in b), None) or platform.processor() or platform.machine()
    cores = {(b.get("physical id"), b.get("core id")) for b in info
             if b.get("processor", "").isdigit() and int(b["processor"]) in usable and "core id" in b}
    flags = set(next((b.get("flags", b.get("Features", "")) for b in info), "").split())
    mhz = None
    try:
        mhz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    except (OSError, ValueError):
        vals = [float(b["cpu MHz"]) for b in info if "cpu MHz" in b]
        mhz = max(vals) if vals else None
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512, 2 FMA units"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 32, "AVX2+FMA, 2 FMA units"
    elif "asimd" in flags or platform.machine() in ("arm64", "aarch64"):
        per_cycle, isa = 16, "NEON, 2 FMA units"
    elif "avx" in flags:
        per_cycle, isa = 16, "AVX"
    else:
        per_cycle, isa = 8, "SSE"
    return {
        "name": name, "logical_cpus": os.cpu_count(), "usable_cpus": len(usable),
        "physical_cores": len(cores) or len(usable), "mhz": mhz, "flops_per_cycle_per_core": per_cycle, "isa": isa,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
    }


#: What holds a library to AVX2 on a CPU with AVX-512, for each library that has a switch: PyTorch
#: (ATen's kernels, oneDNN) and OpenCV (its dispatched kernels). onnxruntime picks its kernels from
#: cpuid and has none, so no run here is a real AVX2 machine's.
AVX2_LIMITS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENCV_CPU_DISABLE": "AVX512F,AVX512-SKX"}


def avx2_limited() -> bool:
    return all(os.environ.get(k) == v for k, v in AVX2_LIMITS.items())


def restart_with_avx2_limits() -> None:
    """Run this script again with :data:`AVX2_LIMITS` set (the libraries read them once, when they load)."""
    if not avx2_limited():
        os.environ.update(AVX2_LIMITS)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def isa_line(cpu: dict[str, Any]) -> str:
    """The instruction set the CPU offers, and what this run lets the libraries use of it."""
    base = cpu["isa"].split(",")[0] + (" with VNNI" if cpu["vnni"] else "")
    if avx2_limited():
        return (f"{base} CPU with AVX2 limits where settable (PyTorch and OpenCV held to AVX2; onnxruntime has "
                "no switch and uses what the CPU offers): not an AVX2 machine's figures")
    return base


def cpu_peak_gflops(cpu: dict[str, Any], threads: Optional[int]) -> tuple[float, str]:
    cores = min(threads or cpu["physical_cores"], cpu["physical_cores"])
    mhz = cpu["mhz"] or 2500.0
    peak = cores * mhz / 1000 * cpu["flops_per_cycle_per_core"]
    how = (f"estimated: {cores} core(s) x {mhz / 1000:.2f} GHz{'' if cpu['mhz'] else ' (assumed)'} x "
           f"{cpu['flops_per_cycle_per_core']} FP32 FLOP/cycle ({cpu['isa']})")
    return peak, how


def gpu_name() -> tuple[Optional[str], str]:
    """The first GPU's name and where it came from; (None, why) when there is none."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), "torch"
    except ImportError:
        pass
    try:
        from fexsdk._trt import current_gpu

        return current_gpu().name, "cuda-python"
    except Exception:  # noqa: BLE001 - no cuda-python, no driver or no GPU: try the next way
        pass
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0], "nvidia-smi"
        except (OSError, subprocess.SubprocessError):
            pass
    return None, "no GPU found (torch, cuda-python, nvidia-smi)"


def gpu_peaks(name: Optional[str], override: Optional[float]) -> dict[str, Optional[float]]:
    if override:
        return {"fp32": override, "fp16": override, "source": "--gpu-peak-gflops"}
    for key, fp32, fp16 in GPU_PEAKS:
        if name and key.lower() in name.lower():
            return {"fp32": float(fp32), "fp16": float(fp16), "source": f"data sheet ({key}, dense)"}
    return {"fp32": None, "fp16": None, "source": "unknown GPU: pass --gpu-peak-gflops"}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "fexsdk": FEXSDK_VERSION, "numpy": np.__version__,
           "opencv": cv2.__version__, "onnxruntime": ort.__version__}
    for mod in ("torch", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


# ---------------------------------------------------------------------------- data
