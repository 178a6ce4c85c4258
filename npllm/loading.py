"""Lesson 06 — from a file on disk to a running model and its tokenizer.

    npllm.load("smollm2-135m-instruct")      # the default model (an alias)
    npllm.load("path/to/model.gguf")         # a GGUF file of any supported family
    npllm.load("path/to/hf_directory")       # config.json + *.safetensors

The checkpoint is read once (``npllm.io.checkpoint.read_checkpoint``); the model takes its
tensors and the tokenizer its vocabulary (from the GGUF metadata or ``tokenizer.json``).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from .errors import ModelNotFoundError
from .io.checkpoint import read_checkpoint, return_freed_memory
from .model import CausalLM
from .models import resolve_model
from .tokenizer import Tokenizer


def load(source: Optional[str] = None, dtype=np.float32, dequantize: bool = False,
         progress: bool = False, kv_dtype=None) -> Tuple[CausalLM, Tokenizer]:
    """``(model, tokenizer)`` for an alias (default ``"smollm2-135m-instruct"``), a GGUF or an HF directory.

    An HF directory without tokenizer files (e.g. a bare ``save_pretrained`` model)
    gives ``tokenizer=None``.  ``kv_dtype`` sets ``model.kv_dtype``, the KV cache's storage
    (default: float16 for quantized weights, else ``dtype``).
    """
    path = resolve_model(source)
    config, tensors, ckpt = read_checkpoint(path, dequantize=dequantize, progress=progress)
    model = CausalLM.from_tensors(config, tensors, dtype=dtype, source=path)
    model.kv_dtype = kv_dtype
    if os.path.isdir(path):
        try:
            tokenizer = Tokenizer.from_hf_directory(path)
        except ModelNotFoundError:
            tokenizer = None
    else:
        tokenizer = Tokenizer.from_gguf(ckpt)
    if tokenizer is not None and config.vocab_size > tokenizer.vocab_size:
        tokenizer.model_vocab_size = config.vocab_size  # padded embedding rows decode to nothing
    # The file's metadata (10**5 token and merge strings) and the tokenizer's build lists are
    # garbage now: hand their ~15 MB back to the OS instead of carrying them all run long.
    del ckpt, tensors
    return_freed_memory(collect=False)
    return model, tokenizer
