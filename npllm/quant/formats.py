"""Lesson 06 — the names and sizes of GGUF tensor types (no kernels, no Numba).

Every GGML type id a GGUF file may carry has a name; the ones npllm can load also have a
block layout: how many values one block holds and how many bytes it takes.  A row of a
quantized matrix is a whole number of blocks.  ``npllm.io.gguf`` reads files with this table
alone; ``npllm.quant`` (the reference dequantizers and the Numba kernels) builds on it.
"""

from __future__ import annotations

from typing import Dict, Tuple

from ..errors import ModelFormatError

# GGML type ids (= gguf.GGMLQuantizationType) and names of every type a GGUF file may hold.
GGML_TYPE_NAMES: Dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16 = 0, 1, 2, 3, 6, 7, 8, 30
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS = 10, 11, 12, 13, 14, 20, 23

# Supported types: id -> (values per block, bytes per block)
BLOCK_LAYOUT: Dict[int, Tuple[int, int]] = {
    F32: (1, 4), F16: (1, 2), BF16: (1, 2),
    Q8_0: (32, 34), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), IQ4_NL: (32, 18),
    Q2_K: (256, 84), Q3_K: (256, 110), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210),
    IQ4_XS: (256, 136),
}
DENSE_TYPES = (F32, F16, BF16)

# The IQ4_NL / IQ4_XS codebook: a 4-bit index q stands for d * IQ4_VALUES[q].  The 16 levels are
# denser near 0, where most weights are, than a uniform grid of 16 steps would be.
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def type_name(ggml_type: int) -> str:
    """'Q4_1' for 3, etc.; 'type 99' for ids no GGUF version defines."""
    return GGML_TYPE_NAMES.get(int(ggml_type), f"type {int(ggml_type)}")


def check_type(ggml_type) -> int:
    """The type id as an int; ``ModelFormatError`` naming the type if npllm cannot load it."""
    t = int(ggml_type)
    if t not in BLOCK_LAYOUT:
        supported = ", ".join(type_name(k) for k in BLOCK_LAYOUT)
        raise ModelFormatError(
            f"unsupported GGUF tensor type {type_name(t)} (ggml type id {t}); npllm supports {supported}"
        )
    return t
