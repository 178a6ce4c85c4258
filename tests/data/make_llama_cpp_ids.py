"""Regenerate llama_cpp_ids.json: llama.cpp's own ids for extra strings on the test vocabularies.

Not run by the tests (they must not need llama.cpp).  Needs llama-cpp-python 0.3.36 and the
vocabularies (python tests/fetch_test_vocab.py), plus the gemma3-270m alias:

    python tests/data/make_llama_cpp_ids.py

Each string is tokenized with ``Llama(path, vocab_only=True).tokenize(text.encode(),
add_bos=False, special=True)``; ``special=True`` matches control tokens written in the text, as
npllm (and HF tokenizers) always do.
"""

import json
import os
import random
import sys

import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from fetch_test_vocab import vocab_dir  # noqa: E402

from npllm.models import resolve_model  # noqa: E402

CURATED = [
    "Hello", " Hello", "  Hello", "a  b   c    d", " " * 20 + "x", " " * 40 + "x", "x" + " " * 33,
    "tab\tand\t\ttabs\t\t\t\t", "line\n\n\n\nnext\r\nwindows\r\n", "    indented\n        more\n\t\tmixed \t \n",
    "你好，世界！今天天气很好。", "日本語のテキスト、カタカナ。", "한국어 문장입니다.", "Привет, мир! café naïve ß Ωmega",
    "مرحبا بالعالم", "नमस्ते दुनिया", "emoji 🎉🔥👍🏽 flags 🇫🇷🇯🇵 family 👨‍👩‍👧", "\u00a0nbsp\u2003em\u200bzw",
    "def square(x):\n    return x ** 2  # note\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", "<div class=\"x\">\n  <span>hi</span>\n</div>",
    "12345678 3.14159 1e-9 v2.0.1 0xFF", "it's don't we'll I'M THEY'RE", "x" * 300,
]
# Strings where npllm follows the model's tokenizer.json and llama.cpp does not (not recorded):
# Qwen2's NFC (decomposed accents) and llama.cpp's treating the text "</s>" as a control token.
SKIP = {"qwen2": lambda t: "</s>" in t or "\u0301" in t}


def random_strings(seed, n=120):
    rng = random.Random(seed)
    alphabet = "ab cdé\n\t  你好🎉<>/\r0123!'A.,?-"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def main():
    files = {name: str(vocab_dir() / f"ggml-vocab-{name}.gguf")
             for name in ("llama-spm", "phi-3", "gemma-4", "llama-bpe", "qwen2", "gpt-2", "deepseek-llm", "falcon")}
    files["gemma3-270m"] = resolve_model("gemma3-270m")
    out = {"generated_by": f"llama-cpp-python {llama_cpp.__version__}: "
                           "Llama(path, vocab_only=True).tokenize(text, add_bos=False, special=True)",
           "vocabularies": {}}
    for name, path in files.items():
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        skip = SKIP.get(name, lambda t: False)
        texts = [t for t in CURATED + random_strings(name) if not skip(t)]
        out["vocabularies"][name] = [[t, llm.tokenize(t.encode(), add_bos=False, special=True)] for t in texts]
    with open(os.path.join(HERE, "llama_cpp_ids.json"), "w", encoding="utf-8") as f:  # one string per line
        f.write('{"generated_by": %s,\n"vocabularies": {\n' % json.dumps(out["generated_by"]))
        for k, (name, pairs) in enumerate(out["vocabularies"].items()):
            rows = ",\n".join(json.dumps(pair, ensure_ascii=False, separators=(",", ":")) for pair in pairs)
            f.write(f'{json.dumps(name)}: [\n{rows}\n]{"," if k + 1 < len(out["vocabularies"]) else ""}\n')
        f.write("}}\n")


if __name__ == "__main__":
    main()
