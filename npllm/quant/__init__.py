"""Lessons 06-07 — quantized weights: GGUF block formats and the kernels that multiply by them.

These are numerics, not file formats: ``npllm.io`` reads the bytes of a file, and this package
says what the bytes of each tensor type mean.  One file per block family holds each type's
NumPy reference dequantizer next to its Numba kernels:

* ``formats``: type ids, names and block sizes (no Numba; the GGUF reader needs only this);
* ``blocks32``: the 32-value blocks Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL;
* ``kquants``: the 256-value super-blocks Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS;
* ``dense``: F32, F16, BF16 rows;
* ``simd``: the 8-lane vocabulary the kernels are written in (lesson 07);
* ``kernels``: the dispatch by type and the one parallel driver ``_run``;
* ``weight``: the public face, ``dequantize`` and ``QuantizedWeight``.

``npllm.ops.linear`` multiplies by a ``QuantizedWeight`` as by any matrix.
"""

from .formats import BLOCK_LAYOUT, DENSE_TYPES, GGML_TYPE_NAMES, check_type, type_name
from .weight import QuantizedWeight, as_array_or_quantized, dequantize, dequantize_ref

__all__ = ["BLOCK_LAYOUT", "DENSE_TYPES", "GGML_TYPE_NAMES", "QuantizedWeight", "as_array_or_quantized",
           "check_type", "dequantize", "dequantize_ref", "type_name"]
