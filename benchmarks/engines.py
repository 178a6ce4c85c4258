"""Lesson 07 (speed): the engines that ``bench_generate.py`` races, behind one small interface.

Each engine loads one GGUF file and offers the same four calls, so the timing code
in ``bench_generate.py`` is shared and every engine is measured the same way:

    engine.imports()                          # import the engine's libraries; timed as "import"
    engine.load(model_path, threads)          # build everything; timed as "load"
    ids = engine.encode(text)                 # the engine's own tokenizer
    logits = engine.start(prompts, capacity)  # fresh state, prefill a batch of prompts -> [B, V]
    logits = engine.step(tokens)              # one new token per row -> [B, V]

``start`` prefills every prompt and returns the logits of each prompt's last position;
``step`` feeds one token per sequence and returns the next logits. Greedy selection
(argmax) happens outside, in the harness, identically for all engines.

Engines:
- ``npllm``        npllm's public API: ``npllm.load``, ``model.new_cache``, ``model.forward``.
- ``llama.cpp``    llama-cpp-python's low-level C API (``llama_batch`` with one sequence id
                   per row, so batch 8 decodes 8 sequences in one ``llama_decode`` call).
- ``transformers`` HF transformers, fp32, loading the same GGUF (dequantized at load).

Imports of the engines' libraries happen inside ``imports`` so that a child process
only pays for the engine it runs, and the import counts towards the cold start.
"""

import ctypes
import os
import sys

import numpy as np

# [B] = batch rows, [V] = vocabulary size, [T] = prompt length

N_BATCH = 512  # prompt tokens per forward call, for npllm and llama.cpp alike (llama.cpp's default n_ubatch)


def _left_pad(prompts, pad_id):
    """Left-pad token lists into ids [B, T] and attention mask [B, T] (1 = real token)."""
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = p
        mask[b, T - len(p):] = 1
    return ids, mask


class Engine:
    name = "?"

    def versions(self):
        return {}


# ----------------------------------------------------------------------------- npllm
class NpllmEngine(Engine):
    """npllm through its public API, with a preallocated KV cache."""

    name = "npllm"

    def imports(self):
        repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if repo_root not in sys.path:
            sys.path.insert(0, repo_root)   # the work tree's npllm, not a stale install
        import npllm

        try:
            self.load_fn = npllm.load
        except AttributeError as exc:
            raise RuntimeError(f"npllm.load is not available yet ({exc})") from exc
        self.npllm = npllm

    def load(self, model_path, threads):
        self.model, self.tok = self.load_fn(model_path)
        cfg = self.model.config
        self.pad_id = int(getattr(self.tok, "pad_token_id", None) or 0)
        self.vocab_size = cfg.vocab_size

    def encode(self, text):
        return [int(i) for i in self.tok.encode(text)]

    def decode(self, ids):
        return self.tok.decode(list(ids))

    def start(self, prompts, capacity):
        ids, mask = _left_pad(prompts, self.pad_id)
        B, T = ids.shape
        self.cache = None                        # the last run's cache goes first (llama.cpp: _free_context)
        self.cache = self.model.new_cache(B, capacity)
        # One preallocated mask; each call passes a view of its first past+T columns.
        self.mask = np.ones((B, capacity), dtype=np.int64)
        self.mask[:, :T] = mask
        self.padded = bool((mask == 0).any())
        self.length = T
        # The prompt in chunks of N_BATCH tokens, as llama.cpp's context below takes it
        # (n_batch = n_ubatch = 512): a long prompt's activations are a chunk's, not the whole's.
        for lo in range(0, T, N_BATCH):
            hi = min(T, lo + N_BATCH)
            logits, self.cache = self.model.forward(
                ids[:, lo:hi], attention_mask=self.mask[:, :hi] if self.padded else None,
                past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return logits[:, -1]

    def step(self, tokens):
        self.length += 1
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)           # [B, 1]
        logits, self.cache = self.model.forward(
            ids, attention_mask=self.mask[:, :self.length] if self.padded else None,
            past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return logits[:, -1]

    def sampler(self, temperature, top_k, top_p, min_p, seed):
        """A function logits [V] -> token: npllm's processor chain, as ``npllm generate`` builds it
        (temperature -> top-k -> top-p -> min-p, the fused path), then a draw."""
        from npllm import sampling

        chain = sampling.build_processors(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p,
                                          min_p=min_p)
        rng = np.random.default_rng(seed)
        none = np.zeros((1, 0), np.int64)   # no penalty in the chain: the history is not read
        return lambda logits: int(sampling.sample(chain(none, logits[None, :]), rng)[0])

    def versions(self):
        import numba

        return {"npllm": getattr(self.npllm, "__version__", "?"), "numpy": np.__version__,
                "numba": numba.__version__}


# ------------------------------------------------------------------------- llama.cpp
class LlamaCppEngine(Engine):
    """llama.cpp through llama-cpp-python's C bindings (no high-level ``Llama`` object).

    Batch 1 and prefill use a context with one sequence. Batch B uses a second context
    with ``n_seq_max = B`` and a KV stream per sequence (``kv_unified = False``); every
    decode step is one ``llama_decode`` of a ``llama_batch`` holding B tokens, token b
    tagged with sequence id b. The previous context is freed before a new one is made.
    """

    name = "llama.cpp"

    def imports(self):
        import llama_cpp

        self.lc = llama_cpp

    def load(self, model_path, threads, n_ctx=2048):
        lc = self.lc
        self.threads = threads
        self.n_ctx = n_ctx
        # Silence llama.cpp's log (it goes to stderr otherwise); keep the callback alive.
        self._log_cb = lc.llama_log_callback(lambda level, text, data: None)
        lc.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = lc.llama_model_load_from_file(model_path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.vocab_size = lc.llama_vocab_n_tokens(self.vocab)
        self.ctx = None
        self.batch = None
        self.ctx_seqs = 0
        self._new_context(n_seq=1, n_ctx=n_ctx)   # part of "load", as llama.cpp's tools do

    def _free_context(self):
        if self.batch is not None:
            self.lc.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            self.lc.llama_free(self.ctx)
            self.ctx = None

    def _new_context(self, n_seq, n_ctx):
        lc = self.lc
        self._free_context()
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = N_BATCH
        cparams.n_ubatch = N_BATCH
        cparams.n_seq_max = n_seq
        cparams.kv_unified = False                  # one KV stream per sequence
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq={n_seq})")
        self.ctx_seqs, self.ctx_len = n_seq, n_ctx
        self.batch = lc.llama_batch_init(N_BATCH, 0, 1)

    def encode(self, text):
        lc = self.lc
        raw = text.encode("utf-8")
        buf = (lc.llama_token * (len(raw) + 8))()
        n = lc.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), True, False)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} tokens")
        return [int(buf[i]) for i in range(n)]

    def decode(self, ids):
        lc = self.lc
        out = bytearray()
        buf = ctypes.create_string_buffer(256)
        for t in ids:
            n = lc.llama_token_to_piece(self.vocab, int(t), buf, len(buf), 0, False)
            out += buf.raw[:max(n, 0)]
        return out.decode("utf-8", errors="replace")

    def _fill(self, entries):
        """entries: (token, pos, seq_id, want_logits) tuples -> self.batch."""
        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if want else 0
        b.n_tokens = len(entries)

    def _decode(self, entries):
        for lo in range(0, len(entries), N_BATCH):
            self._fill(entries[lo:lo + N_BATCH])
            rc = self.lc.llama_decode(self.ctx, self.batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")

    def _logits(self, rows):
        """Logits of the batch entries at indices ``rows`` of the last decode -> [B, V]."""
        out = np.empty((len(rows), self.vocab_size), dtype=np.float32)
        for r, i in enumerate(rows):
            ptr = self.lc.llama_get_logits_ith(self.ctx, i)
            out[r] = np.ctypeslib.as_array(ptr, shape=(self.vocab_size,))
        return out

    def start(self, prompts, capacity):
        B = len(prompts)
        per_seq = -(-capacity // 256) * 256
        if B == 1 and self.ctx_seqs == 1 and capacity <= self.ctx_len:
            self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        else:
            self._new_context(n_seq=B, n_ctx=max(per_seq * B, self.n_ctx if B == 1 else 0))
        self.pos = [len(p) for p in prompts]
        if B == 1:
            p = prompts[0]
            self._decode([(t, j, 0, j == len(p) - 1) for j, t in enumerate(p)])
            return self._logits([-1])                 # -1: the last output of the last chunk
        # All prompts in one batch (B sequences); the logits of each prompt's last token.
        entries, rows = [], []
        for s, p in enumerate(prompts):
            entries += [(t, j, s, j == len(p) - 1) for j, t in enumerate(p)]
            rows.append(len(entries) - 1)
        if len(entries) > N_BATCH:
            raise RuntimeError(f"batch prompts exceed n_batch={N_BATCH} tokens in total")
        self._decode(entries)
        return self._logits(rows)

    def step(self, tokens):
        entries = []
        for s, t in enumerate(np.asarray(tokens).reshape(-1)):
            entries.append((int(t), self.pos[s], s, True))
            self.pos[s] += 1
        self._decode(entries)
        return self._logits(range(len(entries)))

    def sampler(self, temperature, top_k, top_p, min_p, seed):
        """A function (ignored logits) -> token: llama.cpp's own sampler chain, as llama-cli's
        defaults order it (top-k -> top-p -> min-p -> temperature -> dist), sampling the last
        decoded position straight from the context."""
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(top_k))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(min_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        self._chain = chain   # kept alive with the engine
        return lambda logits: int(lc.llama_sampler_sample(chain, self.ctx, -1))

    def versions(self):
        lc = self.lc
        info = lc.llama_print_system_info()
        return {"llama_cpp_python": lc.__version__,
                "system_info": info.decode(errors="replace").strip() if info else ""}


# ---------------------------------------------------------------------- transformers
class TransformersEngine(Engine):
    """HF transformers in fp32; the GGUF is dequantized to fp32 at load."""

    name = "transformers"

    def imports(self):
        import torch
        import transformers  # noqa: F401  (the import is part of the cold start)

        self.torch = torch

    def load(self, model_path, threads):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch = self.torch
        torch.set_num_threads(threads)
        folder, fname = os.path.split(os.path.abspath(model_path))
        self.tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname,
                                                          dtype=torch.float32)
        self.model.eval()
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def encode(self, text):
        return list(self.tok.encode(text))

    def decode(self, ids):
        return self.tok.decode(list(ids))

    def _forward(self, ids, positions, mask):
        torch = self.torch
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        return out.logits[:, -1].float().numpy()

    def start(self, prompts, capacity):
        from transformers import DynamicCache

        torch = self.torch
        ids, mask = _left_pad(prompts, self.pad_id)
        B, T = ids.shape
        self.mask = torch.ones((B, capacity), dtype=torch.long)
        self.mask[:, :T] = torch.from_numpy(mask)
        self.length = T
        pos = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)          # as HF generate
        self.next_pos = torch.from_numpy(pos[:, -1:] + 1)                   # [B, 1]
        self.cache = DynamicCache()
        return self._forward(torch.from_numpy(ids), torch.from_numpy(pos), self.mask[:, :T])

    def step(self, tokens):
        torch = self.torch
        self.length += 1
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64).reshape(-1, 1))
        logits = self._forward(ids, self.next_pos, self.mask[:, :self.length])
        self.next_pos = self.next_pos + 1
        return logits

    def versions(self):
        import transformers

        return {"torch": self.torch.__version__, "transformers": transformers.__version__}


ENGINES = {"npllm": NpllmEngine, "llama.cpp": LlamaCppEngine, "transformers": TransformersEngine}

# The import that tells whether an engine is installed, and how to install it.
REQUIREMENTS = {"npllm": ("numba", "pip install -e ."),
                "llama.cpp": ("llama_cpp", "pip install llama-cpp-python"),
                "transformers": ("transformers", 'pip install "torch==2.13.0" transformers accelerate')}
