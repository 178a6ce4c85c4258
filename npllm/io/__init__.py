"""Lesson 06 — reading real checkpoints: GGUF files (``gguf.py``), HF safetensors
directories (``safetensors.py``) and the GGUF tensor types (``quants.py``)."""
