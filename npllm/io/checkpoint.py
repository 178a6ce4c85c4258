"""Lesson 06 — one entry point for every checkpoint kind: a path -> (config, named tensors).

    config, tensors, ckpt = read_checkpoint("model.gguf")     # or an HF directory

GGUF tensors stay in their quantized blocks (``QuantizedWeight``); F32/F16/BF16 tensors
become float arrays.  ``dequantize=True`` turns every weight into fp32, which is how HF
transformers loads a GGUF (the numerical reference).  Nothing is unpickled: GGUF and
safetensors are plain data.  ``CausalLM.from_pretrained`` and ``npllm.load`` build on this;
the returned ``ckpt`` (a ``GGUFCheckpoint`` or ``HFCheckpoint``) keeps what the tokenizer needs.
"""

from __future__ import annotations

import os
import sys

from ..errors import ModelFormatError


def _progress(items, total: int, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="tensor", file=sys.stderr, leave=False)


def read_checkpoint(path: str, dequantize: bool = False, progress: bool = False):
    """``(config, tensors, ckpt)`` for a ``.gguf`` file or an HF directory (``path`` must exist)."""
    if os.path.isdir(path):
        from .safetensors import read_hf_directory

        ckpt = read_hf_directory(path)
        tensors = dict(_progress(ckpt.tensors.items(), len(ckpt.tensors), "loading", progress))
        return ckpt.config, tensors, ckpt
    if path.endswith(".gguf"):
        from ..quant import as_array_or_quantized, dequantize as dequantize_raw
        from .gguf import read_gguf

        ckpt = read_gguf(path)
        tensors = {}
        for key, raw in _progress(ckpt.tensors.items(), len(ckpt.tensors), "loading", progress):
            if dequantize:
                tensors[key] = dequantize_raw(raw.data, raw.ggml_type, raw.shape)
            else:
                tensors[key] = as_array_or_quantized(raw.data, raw.ggml_type, raw.shape)
            ckpt.release(raw)  # the file's pages of this tensor leave our RSS (views re-read them)
        return ckpt.config, tensors, ckpt
    from .safetensors import PICKLE_SUFFIXES, pickle_refusal

    if path.endswith(PICKLE_SUFFIXES):
        raise pickle_refusal(path)
    raise ModelFormatError(f"{path}: expected a .gguf file or an HF model directory")


def return_freed_memory(collect: bool = True) -> None:
    """Give the memory freed while loading (parser objects, pre-fusion weights) back to the OS.

    glibc keeps freed heap pages mapped; ``malloc_trim`` releases them, so the resident size
    reflects what the model really holds.  A no-op on other C libraries.  ``collect=False``
    skips the garbage collector (0.1 s with a tokenizer's 10**5 strings alive) when only
    reference counting freed the memory."""
    import ctypes
    import gc

    if collect:
        gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
