"""Lesson 06 — from a file on disk to a running model.

    npllm.load("smollm2-135m-instruct")      # the default model (an alias)
    npllm.load("path/to/model.gguf")         # any llama / qwen2 GGUF
    npllm.load("path/to/hf_directory")       # config.json + *.safetensors

GGUF tensors stay in their quantized blocks (``QuantizedWeight``); F32/F16/BF16
tensors become float arrays.  ``dequantize=True`` turns every weight into fp32,
which is how HF transformers loads a GGUF — the numerical reference.
Nothing is unpickled: GGUF and safetensors are plain data.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Tuple

import numpy as np

from .errors import ModelFormatError, ModelNotFoundError
from .model import CausalLM
from .models import resolve_model
from .tokenizer import Tokenizer


def _progress(items, total: int, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="tensor", file=sys.stderr, leave=False)


def load_model(source: Optional[str] = None, dtype=np.float32, dequantize: bool = False,
               progress: bool = False) -> CausalLM:
    """A ``CausalLM`` with weights from an alias, a ``.gguf`` file or an HF directory."""
    return _load_model(resolve_model(source), dtype, dequantize, progress)[0]


def _load_model(path: str, dtype, dequantize: bool, progress: bool):
    """(model, checkpoint) — the checkpoint lets ``load`` build the tokenizer without re-reading."""
    if os.path.isdir(path):
        from .io.safetensors import read_hf_directory

        ckpt = read_hf_directory(path)
        tensors = dict(_progress(ckpt.tensors.items(), len(ckpt.tensors), "loading", progress))
        config = ckpt.config
    elif path.endswith(".gguf"):
        from .io.gguf import read_gguf
        from .io.quants import as_array_or_quantized, dequantize as dequantize_raw

        ckpt = read_gguf(path)
        config = ckpt.config
        tensors = {}
        for key, raw in _progress(ckpt.tensors.items(), len(ckpt.tensors), "loading", progress):
            if dequantize:
                tensors[key] = dequantize_raw(raw.data, raw.ggml_type, raw.shape)
            else:
                tensors[key] = as_array_or_quantized(raw.data, raw.ggml_type, raw.shape)
            ckpt.release(raw)  # the file's pages of this tensor leave our RSS (views re-read them)
    else:
        from .io.safetensors import PICKLE_SUFFIXES, pickle_refusal

        if path.endswith(PICKLE_SUFFIXES):
            raise pickle_refusal(path)
        raise ModelFormatError(f"{path}: expected a .gguf file or an HF model directory")

    model = CausalLM(config, dtype=dtype, init=False)
    model.load_state_dict(tensors)
    model.source = path
    del tensors
    _return_freed_memory()
    return model, ckpt


def _return_freed_memory() -> None:
    """Give the memory freed while loading (parser objects, pre-fusion weights) back to the OS.

    glibc keeps freed heap pages mapped; ``malloc_trim`` releases them, so the resident size
    reflects what the model really holds.  A no-op on other C libraries."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load(source: Optional[str] = None, dtype=np.float32, dequantize: bool = False,
         progress: bool = False) -> Tuple[CausalLM, Tokenizer]:
    """``(model, tokenizer)`` for an alias (default ``"smollm2-135m-instruct"``), a GGUF or an HF directory.

    An HF directory without tokenizer files (e.g. a bare ``save_pretrained`` model)
    gives ``tokenizer=None``.
    """
    path = resolve_model(source)
    model, ckpt = _load_model(path, dtype, dequantize, progress)
    if os.path.isdir(path):
        try:
            tokenizer = Tokenizer.from_hf_directory(path)
        except ModelNotFoundError:
            tokenizer = None
    else:
        tokenizer = Tokenizer.from_gguf(ckpt)
    return model, tokenizer
