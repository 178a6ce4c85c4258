"""npllm imports and runs a forward pass with PyTorch blocked (no torch at runtime)."""

import subprocess
import sys

SCRIPT = r"""
import sys
sys.modules['torch'] = None          # any 'import torch' now raises ImportError
sys.modules['transformers'] = None
import numpy as np
import npllm
from npllm.config import tiny_config
model = npllm.CausalLM(tiny_config.replace(num_hidden_layers=2, vocab_size=300))
logits, cache = model.forward(np.array([[1, 2, 3]]), use_cache=True)
assert logits.shape == (1, 3, 300) and np.isfinite(logits).all()
assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
print('ok')
"""


def test_import_and_forward_with_torch_blocked():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
