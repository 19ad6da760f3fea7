"""What this CPU can do fast, from the flags the kernel reports."""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_native_bf16(flags: frozenset[str]) -> bool:
    """True on CPUs where bf16 matmuls are fast (AVX512-BF16 or AMX); emulated bf16 is slow."""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_vnni(flags: frozenset[str]) -> bool:
    """True where int8 dot products have VNNI; without it ONNX Runtime's u8s8 kernels can
    saturate, so int8 weights are quantized to 7 bits (reduce_range) there."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
