"""Lessons 06-07 — quantized weights: GGUF block formats and the kernels that multiply by them.

These are numerics, not file formats: ``npllm.io`` reads the bytes of a file, and this package
says what the bytes of each tensor type mean (``formats``: names and block sizes; ``weight``:
the NumPy reference dequantizers and ``QuantizedWeight``; ``kernels``: the Numba kernels).
``npllm.ops.linear`` multiplies by a ``QuantizedWeight`` as by any matrix.
"""

from .formats import BLOCK_LAYOUT, DENSE_TYPES, GGML_TYPE_NAMES, check_type, type_name
from .weight import QuantizedWeight, as_array_or_quantized, dequantize, dequantize_ref

__all__ = ["BLOCK_LAYOUT", "DENSE_TYPES", "GGML_TYPE_NAMES", "QuantizedWeight", "as_array_or_quantized",
           "check_type", "dequantize", "dequantize_ref", "type_name"]
