"""Requantize the default model (SmolLM2-135M-Instruct, Q4_1) with llama.cpp's llama-quantize.

    python benchmarks/requantize.py --llama-bin DIR [--type Q4_K_M]     # prints the new file's path

Q4_K_M is the most common download, and llama.cpp's fast CPU matmul paths cover it (they do not
cover Q4_1). llama-quantize needs `--allow-requantize` to start from a quantized file. SmolLM2's
576-wide rows are not a multiple of the k-quants' 256-value blocks, so llama-quantize stores most
of them as Q5_0 and keeps Q4_K/Q6_K for the rest, as it does for any such model. The file goes to
$NPLLM_CACHE (default ~/.cache/npllm) under a temporary name and is renamed when complete.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_generate import default_model_path  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-bin", required=True, help="the directory holding llama-quantize")
    p.add_argument("--type", default="Q4_K_M")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    src = default_model_path()
    if src is None or not os.path.exists(src):
        p.error("the default model is not installed (make model)")
    cache = os.environ.get("NPLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "npllm")
    os.makedirs(cache, exist_ok=True)
    out = os.path.join(cache, os.path.basename(src).replace(".Q4_1.", f".{args.type}."))
    if not os.path.exists(out):
        tmp = out + ".part"
        subprocess.run([os.path.join(args.llama_bin, "llama-quantize"), "--allow-requantize", src, tmp,
                        args.type, str(args.threads)], check=True, stdout=subprocess.DEVNULL)
        os.replace(tmp, out)
    print(out)


if __name__ == "__main__":
    main()
