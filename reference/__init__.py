"""The PyTorch twin of npllm, used only by the tests.

``reference.model.CausalLM`` fills in the seed lesson's section 4.1 in plain
torch (no transformers import), module for module like npllm and with the same
HF parameter names, so one state dict loads into both.
"""
