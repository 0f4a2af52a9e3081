"""What this machine's CPU is: /proc/cpuinfo read once here, for the manifest, ``--precision=auto`` and the
benchmarks' first line. Plain Python at import (``dogcat runs`` reads manifests without loading torch); only
:func:`cpu_bf16_native` asks torch, when called."""

from __future__ import annotations

import platform


def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (``model name``, ``vendor_id``, ``cpu family``, ``model``,
    ``flags``, ...); empty where there is no such file."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if key.strip() == "flags":  # the first processor's block is complete by then
                    break
    except OSError:
        pass
    return info


def cpu_name() -> str:
    """The CPU's model name (``AMD EPYC 9R14 96-Core Processor``), or what ``platform`` knows."""
    return cpu_info().get("model name") or platform.processor() or platform.machine()


def cpu_bf16_native() -> bool:
    """True when this CPU runs bf16 natively (AVX-512 BF16 or AMX, as oneDNN sees it); elsewhere bf16 is
    emulated and slower than fp32. What ``--precision=auto`` goes by on a CPU."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amd_generation(family: int, model: int) -> str | None:
    """AMD's core generation from /proc/cpuinfo's family and model (the marketing name often omits it)."""
    if family == 23:
        return "Zen 2" if model >= 0x30 else "Zen"
    if family == 25:
        return "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF else "Zen 3"
    if family == 26:
        return "Zen 5"
    return None


def cpu_kind() -> str:
    """This CPU for a benchmark line: model name, AMD core generation, and whether bf16 is native (what
    ``--precision=auto`` goes by), e.g. ``AMD EPYC (Zen 4), native bf16 (avx512_bf16)``."""
    info, name = cpu_info(), cpu_name()
    gen = None
    if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family", "").isdigit():
        gen = amd_generation(int(info["cpu family"]), int(info.get("model", "0") or 0))
    flags = [f for f in ("amx_bf16", "avx512_bf16") if f in info.get("flags", "").split()]
    bf16 = f"native bf16 ({', '.join(flags) or 'oneDNN'})" if cpu_bf16_native() else "no native bf16 (fp32 only)"
    return f"{name}{f' ({gen})' if gen else ''}, {bf16}"
