"""GPU targets the kernels compile for, and what each one's compiler accepts.

One table of facts per target (wavefront width, shared memory / LDS per program, whether the matrix units
take tf32) and the pure functions the kernels use to pick what differs by target: the `tl.dot` operand
precision and which autotune list a device runs. `motif-data kernels check` compiles for the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported at run time: the CLI reads this table without loading torch
    import torch

__all__ = ["Target", "TARGETS", "AMD_ARCHS", "parse_targets", "dot_precision"]


@dataclass(frozen=True)
class Target:
    """One GPU architecture as Triton's backend names it (`GPUTarget(backend, arch, warp_size)`)."""

    name: str  # "gfx942", "sm_90"
    backend: str  # "hip" or "cuda"
    arch: str | int  # "gfx942" for HIP, 90 for CUDA
    warp_size: int
    shared_limit: int  # bytes of shared memory / LDS one program may use
    tf32: bool  # the matrix units take tf32 operands (Triton accepts input_precision="tf32")
    gpu: str  # what a user would call it
    # Registers per SM / CU and resident threads, for the occupancy NVIDIA's compiler does not print.
    regs_per_sm: int = 65536
    threads_per_sm: int = 2048
    shared_per_sm: int = 0

    @property
    def family(self) -> str:
        """The key of this target's autotune lists: the AMD arch itself, or "cuda" for every NVIDIA arch."""
        return self.name if self.backend == "hip" else "cuda"


_KIB = 1024
# LDS per workgroup: 64 KiB on CDNA2/CDNA3, 160 KiB on CDNA4 (AMD ISA guides). NVIDIA: the opt-in maximum
# per block and per SM of each compute capability (CUDA C++ Programming Guide, "Technical Specifications").
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("gfx90a", "hip", "gfx90a", 64, 64 * _KIB, False, "AMD MI250 / MI250X / MI210 (CDNA2)"),
        Target("gfx942", "hip", "gfx942", 64, 64 * _KIB, True, "AMD MI300X / MI300A / MI325X (CDNA3)"),
        Target("gfx950", "hip", "gfx950", 64, 160 * _KIB, False, "AMD MI350X / MI355X (CDNA4)"),
        Target("sm_80", "cuda", 80, 32, 163 * _KIB, True, "NVIDIA A100", shared_per_sm=164 * _KIB),
        Target("sm_89", "cuda", 89, 32, 99 * _KIB, True, "NVIDIA L40S / RTX 4090", 65536, 1536, 100 * _KIB),
        Target("sm_90", "cuda", 90, 32, 227 * _KIB, True, "NVIDIA H100 / H200", shared_per_sm=228 * _KIB),
        Target("sm_100", "cuda", 100, 32, 227 * _KIB, True, "NVIDIA B200", shared_per_sm=228 * _KIB),
    )
}
AMD_ARCHS = tuple(name for name, t in TARGETS.items() if t.backend == "hip")


def parse_targets(text: str) -> list[Target]:
    """'gfx90a,gfx942,sm_90' → targets, in that order; an unknown name fails naming the known ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise ValueError(f"--arch: unknown target(s) {unknown or [text]}; known: {', '.join(TARGETS)}")
    return [TARGETS[n] for n in dict.fromkeys(names)]


def dot_precision(dtype: torch.dtype, target: Target | None, *, allow_tf32: bool = False) -> str:
    """The `input_precision` for a `tl.dot` of `dtype` operands on `target` (None: Triton's CPU interpreter).

    bf16/fp16 operands use the matrix units' native product, which every backend calls "ieee" (HIP on CDNA2
    and CDNA4 accepts nothing else; on NVIDIA the PTX is the same as for "tf32", checked on sm_90). fp32
    operands stay exact ("ieee") unless the caller allows tf32 (PyTorch's own `allow_tf32` switch) and the
    target's matrix units take it. The interpreter's bf16 dot is wrong (Triton 3.9), so there the operands
    are upcast ("upcast", handled by the kernels) after being rounded as on the GPU.
    """
    if target is None:
        return "ieee" if dtype.itemsize == 4 else "upcast"
    if dtype.itemsize == 4 and allow_tf32 and target.tf32:
        return "tf32"
    return "ieee"
