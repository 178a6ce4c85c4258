"""Lesson 06 — reading real checkpoints: GGUF files (``gguf.py``) and HF safetensors
directories (``safetensors.py``).  What the bytes of a quantized tensor mean is numerics, in
``npllm.quant``."""
