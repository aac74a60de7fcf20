"""Precision choice of ``train.precision: auto``: bf16 only where the hardware multiplies bf16 natively."""

from __future__ import annotations

import torch

from productgen.training.device import cpu_has_native_bf16, pick_dtype

EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
XEON_AVX512 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512dq\n"  # emulated bf16 only
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"


def test_native_bf16_read_from_cpu_flags() -> None:
    assert cpu_has_native_bf16(EPYC)
    assert cpu_has_native_bf16(SAPPHIRE)
    assert not cpu_has_native_bf16(XEON_AVX512)  # AVX512 without BF16: autocast would be slower than fp32
    assert not cpu_has_native_bf16("")


def test_auto_precision_on_cpu_follows_the_flags() -> None:
    want = torch.bfloat16 if cpu_has_native_bf16() else None
    assert pick_dtype("auto", torch.device("cpu")) is want
    assert pick_dtype("fp32", torch.device("cpu")) is None
    assert pick_dtype("bf16", torch.device("cpu")) is torch.bfloat16
