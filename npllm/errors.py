"""Errors raised by npllm.

Every error a user can cause (a bad file, a bad config, a bad parameter) is an
``NpllmError``.  The three user-facing kinds also subclass ``ValueError``, so
code written against HF transformers (``except ValueError``) keeps working.
Each message names the file, field, tensor or parameter that is wrong and
what was expected.
"""


class NpllmError(Exception):
    """Base class of every npllm error."""


class ConfigError(NpllmError, ValueError):
    """A model configuration field is missing or invalid (the message names it)."""


class ModelFormatError(NpllmError, ValueError):
    """A checkpoint file is malformed, truncated, or of an unsupported kind."""


class GenerationParameterError(NpllmError, ValueError):
    """A generation or sampling parameter is out of range (the message names it)."""


class ModelNotFoundError(NpllmError, FileNotFoundError):
    """A model path or alias cannot be resolved (the message says how to fix it)."""


class GrammarError(GenerationParameterError):
    """A JSON schema, regex or grammar for structured output cannot be compiled (the message names it)."""
