"""Accelerator presets for the analytical cost model: public spec-sheet figures.

    peak FLOP/s by dtype (dense, no sparsity), HBM bandwidth and size, host link (device <->
    host memory, one direction), interconnect between devices (one direction, per device)
    and its per-message latency, and the latency of one host copy call.

Figures are the vendors' published peaks: a roofline is an upper bound on speed, and the
cost model's efficiency factors bring it down to what a real kernel reaches. Latencies are
typical small-message collective latencies, not spec-sheet numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["HARDWARE", "Accelerator", "get_hardware"]


@dataclass(frozen=True)
class Accelerator:
    name: str
    flops: dict[str, float] = field(hash=False)  # dtype -> peak FLOP/s (dense)
    hbm_bandwidth: float  # bytes/s
    hbm_bytes: float  # bytes of device memory
    host_bandwidth: float  # bytes/s device <-> host, one direction (PCIe)
    link_bandwidth: float  # bytes/s device <-> device, one direction (NVLink / ICI)
    link_latency: float  # seconds per collective step
    # seconds of one device <-> host copy call on top of its bytes (launch and DMA set-up):
    # ~2.3 us per cudaMemcpyAsync measured on an H20 by a KV-offloading project; used for
    # every preset, an estimate elsewhere
    host_copy_latency: float = 2.3e-6

    def peak(self, dtype: str) -> float:
        try:
            return self.flops[dtype]
        except KeyError:
            raise ValueError(
                f"{self.name} has no {dtype!r} figure; known: {sorted(self.flops)}"
            ) from None


HARDWARE: dict[str, Accelerator] = {
    # A100 SXM4 80 GB: 312 TFLOP/s bf16/fp16, 19.5 fp32 (156 tf32), 2.039 TB/s HBM2e,
    # PCIe 4.0 x16 (~32 GB/s), NVLink 3 600 GB/s total (300 each way).
    "a100-80g": Accelerator(
        name="a100-80g",
        flops={"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12, "int8": 624e12},
        hbm_bandwidth=2.039e12,
        hbm_bytes=80e9,
        host_bandwidth=32e9,
        link_bandwidth=300e9,
        link_latency=5e-6,
    ),
    # H100 SXM5: 989 TFLOP/s bf16 dense, 1979 fp8, 67 fp32, 3.35 TB/s HBM3, 80 GB,
    # PCIe 5.0 x16 (~64 GB/s), NVLink 4 900 GB/s total (450 each way).
    "h100": Accelerator(
        name="h100",
        flops={"bfloat16": 989e12, "float16": 989e12, "float32": 67e12, "float8": 1979e12},
        hbm_bandwidth=3.35e12,
        hbm_bytes=80e9,
        host_bandwidth=64e9,
        link_bandwidth=450e9,
        link_latency=5e-6,
    ),
    # H200 SXM: the H100's compute with 141 GB of HBM3e at 4.8 TB/s.
    "h200": Accelerator(
        name="h200",
        flops={"bfloat16": 989e12, "float16": 989e12, "float32": 67e12, "float8": 1979e12},
        hbm_bandwidth=4.8e12,
        hbm_bytes=141e9,
        host_bandwidth=64e9,
        link_bandwidth=450e9,
        link_latency=5e-6,
    ),
    # TPU v5e: 197 TFLOP/s bf16, 394 int8, 819 GB/s HBM2e, 16 GB, ICI 1600 Gbps per chip
    # (200 GB/s; half each way). Host link: PCIe 4.0 x8-class (an estimate).
    "tpu-v5e": Accelerator(
        name="tpu-v5e",
        flops={"bfloat16": 197e12, "int8": 394e12, "float32": 197e12 / 4},
        hbm_bandwidth=819e9,
        hbm_bytes=16e9,
        host_bandwidth=16e9,
        link_bandwidth=100e9,
        link_latency=5e-6,
    ),
}


def get_hardware(name: str) -> Accelerator:
    try:
        return HARDWARE[name]
    except KeyError:
        raise ValueError(f"unknown hardware {name!r}; known: {sorted(HARDWARE)}") from None
