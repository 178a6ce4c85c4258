"""The ``npllm`` command line (lesson 06): generate, chat, info, batch, perplexity, serve (lesson 09).

Flags follow the task names of the issue and accept llama.cpp's spellings too
(``-m``, ``-n/--n-predict``, ``--temp``, ``--repeat-penalty``, ``-s``, ``-t``, ``-f/--file``,
``-c/--ctx-size``).  Sampling defaults are llama.cpp's: temperature 0.8, top-k 40, top-p 0.95,
min-p 0.05; ``--temperature 0`` means greedy.  As in llama-cli, escapes (``\\n``, ``\\t``,
``\\xHH``...) in the prompt, the system prompt and ``--stop`` are processed unless ``--no-escape``.
Structured output: ``--json-schema FILE`` (or inline ``{...}``), ``--regex R``, ``--grammar-file FILE``
(Lark or GBNF), one at a time (``npllm/structured.py``).

A bad input prints one line to stderr (no traceback) and exits with status 2: a bad flag or
number, a file that cannot be read, text that is not UTF-8, a model without a tokenizer...
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_MODEL = "smollm2-135m-instruct"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``npllm: error: ...`` (exit status 2)."""

    def error(self, message):
        self.exit(2, f"npllm: error: {message} (see: {self.prog} --help)\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"a .gguf file, an HF directory, or an alias (default: {DEFAULT_MODEL})")
    p.add_argument("-t", "--threads", type=_int_at_least(1), default=None,
                   help="threads for Numba kernels and BLAS (default: $NPLLM_NUM_THREADS or all cores)")
    p.add_argument("--no-progress", action="store_true", help="hide the loading progress bar")


_CACHE_TYPES = {"f16": "float16", "f32": "float32"}


def _add_cache_type_args(p: argparse.ArgumentParser) -> None:
    # llama.cpp's spellings; npllm keeps K and V in one dtype, so either flag sets both
    for short, long, what in (("-ctk", "--cache-type-k", "K"), ("-ctv", "--cache-type-v", "V")):
        p.add_argument(short, long, dest="cache_type_" + what.lower(), choices=sorted(_CACHE_TYPES), default=None,
                       help=f"KV cache storage for {what} (default: f16 for quantized weights, else the model's "
                            "dtype); K and V share one type, so either flag sets both")


def _kv_dtype(args):
    """The dtype -ctk/-ctv ask for (None: the model's default)."""
    k, v = getattr(args, "cache_type_k", None), getattr(args, "cache_type_v", None)
    if k is not None and v is not None and k != v:
        raise _UsageError(f"-ctk/--cache-type-k {k} and -ctv/--cache-type-v {v} differ: npllm stores K and V "
                          "in one type; give them the same one (either flag alone sets both)")
    chosen = k or v
    return _CACHE_TYPES[chosen] if chosen else None


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--max-new-tokens", "--n-predict", dest="max_new_tokens", type=_int_at_least(0),
                   default=128)
    p.add_argument("--temperature", "--temp", dest="temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=_int_at_least(0), default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repetition-penalty", "--repeat-penalty", dest="repetition_penalty", type=float,
                   default=1.0)
    p.add_argument("-s", "--seed", type=_int_at_least(0), default=None)
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when this text appears (repeatable); the stop text is not printed")
    p.add_argument("-c", "--ctx-size", dest="ctx_size", type=_int_at_least(1), default=None,
                   help="tokens of context (default: the model's); chat drops its oldest turns past it")
    p.add_argument("--no-escape", dest="escape", action="store_false",
                   help="do not process escapes (\\n, \\t, \\xHH...) in the prompt and --stop")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="npllm", description="A NumPy causal language model (Llama, Qwen, Gemma, Phi-3...).")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="continue a prompt, streaming the text to stdout")
    _add_model_args(g)
    _add_cache_type_args(g)
    _add_sampling_args(g)
    g.add_argument("prompt", nargs="?", help="the prompt (default: read from -p, -f or stdin)")
    g.add_argument("-p", "--prompt", dest="prompt_opt", default=None)
    g.add_argument("-f", "--file", dest="prompt_file", metavar="FILE", default=None,
                   help="read the prompt from this file (UTF-8)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    constrain = g.add_mutually_exclusive_group()  # structured output (llama-cli's spellings)
    constrain.add_argument("--json-schema", dest="json_schema", metavar="FILE", default=None,
                           help="the output is JSON valid under the JSON schema in FILE, or given inline as {...} "
                           "(needs npllm[structured])")
    constrain.add_argument("--regex", default=None, metavar="R",
                           help="the output matches the regular expression R (no escapes processed)")
    constrain.add_argument("--grammar-file", dest="grammar_file", metavar="FILE", default=None,
                           help="the output follows the Lark or GBNF grammar in FILE")
    g.add_argument("--chat-template", dest="chat_template", metavar="FILE", default=None,
                   help="a Jinja chat template file, for models whose file has none (implies --chat)")
    spec = g.add_mutually_exclusive_group()
    spec.add_argument("--lookup", type=_int_at_least(1), default=None, metavar="N",
                      help="speculative decoding with prompt lookup: draft up to N tokens copied from the "
                           "context (same output as without it)")
    spec.add_argument("--draft-model", dest="draft_model", default=None, metavar="M",
                      help="speculative decoding with drafts from a smaller model M (alias, .gguf or HF "
                           "directory) with the same vocabulary (same output as without it)")
    g.add_argument("--draft-max", dest="draft_max", type=_int_at_least(1), default=8, metavar="N",
                   help="tokens the --draft-model drafts per step (default 8)")

    c = sub.add_parser("chat", help="interactive multi-turn chat using the model's chat template")
    _add_model_args(c)
    _add_cache_type_args(c)
    _add_sampling_args(c)
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--chat-template", dest="chat_template", metavar="FILE", default=None,
                   help="a Jinja chat template file, for models whose file has none")

    i = sub.add_parser("info", help="architecture, parameters, tensor types and KV-cache size")
    _add_model_args(i)
    _add_cache_type_args(i)
    i.add_argument("-c", "--context", type=_int_at_least(1), default=2048,
                   help="tokens of context for the KV-cache size")

    b = sub.add_parser("batch", help="generate for every record of a JSONL file (resumable)")
    _add_model_args(b)
    _add_sampling_args(b)
    b.add_argument("input", help="JSONL: {\"id\": ..., \"prompt\": \"...\"} or {\"id\": ..., \"messages\": [...]} per line")
    b.add_argument("-o", "--output", required=True, help="JSONL output; rerunning skips the ids already in it")
    b.add_argument("-b", "--batch-size", type=_int_at_least(1), default=8)
    b.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: a cluster address, or 'local' (the default when no address is given)")
    b.add_argument("--workers", type=_int_at_least(1), default=None, help="Ray actors (default 2)")
    b.add_argument("--json-schema", dest="json_schema", metavar="FILE", default=None,
                   help="default JSON schema (a file, or the schema itself) for records without their own")

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching "
                                      "(llama-server's flags)")
    sv.add_argument("-m", "--model", default=DEFAULT_MODEL,
                    help=f"a .gguf file, an HF directory, or an alias (default: {DEFAULT_MODEL})")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=_int_at_least(0), default=8080, help="0 picks a free port")
    sv.add_argument("-np", "--parallel", type=_int_at_least(1), default=4, help="slots: requests decoded together")
    sv.add_argument("-c", "--ctx-size", dest="ctx_size", type=_int_at_least(2), default=4096,
                    help="tokens of context shared by the slots (each gets ctx-size / parallel)")
    sv.add_argument("-t", "--threads", type=_int_at_least(1), default=None,
                    help="threads for Numba kernels and BLAS (default: $NPLLM_NUM_THREADS or all cores)")
    sv.add_argument("--max-queue", type=_int_at_least(0), default=64,
                    help="requests that may wait for a slot; beyond them the server answers 429")
    _add_cache_type_args(sv)

    pp = sub.add_parser("perplexity", help="perplexity of a text file (llama.cpp's method)")
    _add_model_args(pp)
    pp.add_argument("file", nargs="?", help="the text file (or -f FILE, as llama-perplexity takes it)")
    pp.add_argument("-f", "--file", dest="file_flag", metavar="FILE", default=None, help="the text file")
    pp.add_argument("-c", "--context", type=_int_at_least(2), default=512, help="tokens per chunk")
    pp.add_argument("--stride", type=_int_at_least(1), default=None,
                    help="sliding window stride (HF method); default: llama.cpp's halves")
    pp.add_argument("--reference", action="store_true",
                    help="run the pure-NumPy reference path instead of the Numba kernels")
    return parser


# ------------------------------------------------------------------ text in
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "\\": "\\",
            "'": "'", '"': '"', "?": "?"}


def process_escapes(text: str) -> str:
    """llama-cli's ``string_process_escapes``: ``\\n \\t \\r \\a \\b \\f \\v \\\\ \\' \\" \\?`` and
    ``\\xHH`` (two hex digits) become their characters; any other backslash stays as written."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            digits = text[i + 2:i + 4]
            if nxt == "x" and len(digits) == 2 and all(c in "0123456789abcdefABCDEF" for c in digits):
                out.append(chr(int(digits, 16)))
                i += 4
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _utf8(data: bytes, where: str) -> str:
    """Bytes -> text, or one line naming the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _UsageError(f"{where} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _argument_text(value: str, where: str, escape: bool) -> str:
    """An argument as the user typed it: Python hands undecodable bytes over as lone surrogates."""
    if value is None:
        return None
    text = _utf8(os.fsencode(value), where)
    return process_escapes(text) if escape else text


def _read_text_file(path: str, where: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _UsageError(f"{where} {path}: {e.strerror or e}") from None
    return _utf8(data, f"{where} {path}")


# ------------------------------------------------------------------ model in
def _load(args, need_tokenizer: bool = True):
    from . import _jit
    from .loading import load

    _jit.set_num_threads(args.threads)
    _jit.announce_compilation()  # one line on stderr if the kernels are not in Numba's cache yet
    template = _read_template(getattr(args, "chat_template", None))
    model, tok = load(args.model, progress=not args.no_progress, kv_dtype=_kv_dtype(args))
    if tok is None and need_tokenizer:
        raise _UsageError(f"{args.model} has no tokenizer (no tokenizer.json in the directory); "
                          f"`npllm {args.command}` needs one: save it there with tokenizer.save_pretrained(dir)")
    if template is not None:
        tok.chat_template = template
    return model, tok


def _read_template(path):
    """The text of a --chat-template FILE (read before the model loads, so a typo fails fast)."""
    if path is None:
        return None
    return _read_text_file(path, "--chat-template")


def _context(args, model) -> int:
    limit = model.config.context_length
    if args.ctx_size is not None and args.ctx_size > limit:
        raise _UsageError(f"-c/--ctx-size {args.ctx_size} is beyond the model's context of {limit} tokens")
    return args.ctx_size or limit


def _sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed)


def _speculative_kwargs(args, model) -> dict:
    """generate() arguments for --lookup N or --draft-model M (generate only)."""
    if getattr(args, "lookup", None) is not None:
        return dict(prompt_lookup_num_tokens=args.lookup)
    if getattr(args, "draft_model", None) is not None:
        from .loading import load

        draft, _ = load(args.draft_model, progress=not args.no_progress)
        if draft.config.vocab_size != model.config.vocab_size:
            raise _UsageError(f"--draft-model {args.draft_model} has a vocabulary of {draft.config.vocab_size} "
                              f"tokens, the model {model.config.vocab_size}: they must share it")
        return dict(assistant_model=draft, num_assistant_tokens=args.draft_max)
    return {}


def _stream(model, tokenizer, ids, args, stop_token_ids, context) -> str:
    """Generate from ``ids`` (at most up to ``context`` tokens in all), streaming to stdout."""
    import numpy as np

    from .streaming import TextStreamer

    stops = [process_escapes(s) if args.escape else s for s in
             (_argument_text(s, "--stop", False) for s in args.stop)]
    streamer = TextStreamer(tokenizer, stop_strings=stops,
                            on_text=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    kwargs = _sampling_kwargs(args)
    kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], context - len(ids))
    kwargs.update(getattr(args, "constraint", None) or {})
    kwargs.update(_speculative_kwargs(args, model))
    model.generate(np.array([ids], dtype=np.int64), eos_token_id=stop_token_ids, streamer=streamer,
                   stopping_criteria=[streamer.stopping_criterion()], **kwargs)
    return streamer.text


def cmd_generate(args) -> int:
    given = [n for n, v in (("the prompt argument", args.prompt), ("-p", args.prompt_opt),
                            ("-f", args.prompt_file)) if v is not None]
    if len(given) > 1:
        raise _UsageError(f"give the prompt once: {' and '.join(given)} were both given")
    if args.prompt_file is not None:
        prompt = _read_text_file(args.prompt_file, "-f")
    elif args.prompt is not None or args.prompt_opt is not None:
        prompt = _argument_text(args.prompt if args.prompt is not None else args.prompt_opt, "the prompt",
                                args.escape)
    else:
        prompt = _utf8(sys.stdin.buffer.read(), "the prompt on stdin")
    if not prompt:
        raise _UsageError("the prompt is empty")
    args.constraint = _constraint_args(args)  # files are read before the model loads
    model, tok = _load(args)
    if args.constraint:
        args.constraint["tokenizer"] = tok
    context = _context(args, model)
    if args.chat or args.chat_template:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    else:
        ids = tok.encode(prompt)
    if len(ids) >= context:
        raise _UsageError(f"the prompt is {len(ids)} tokens, more than the context of {context} tokens "
                          "(shorten it, or raise -c up to the model's context)")
    _stream(model, tok, ids, args, tok.stop_token_ids, context)
    sys.stdout.write("\n")
    return 0


def _constraint_args(args) -> dict:
    """``generate``'s json_schema / regex / grammar keyword from --json-schema, --regex, --grammar-file."""
    if args.json_schema is not None:  # a file, or (as llama-cli takes it) the schema itself
        text = args.json_schema
        if not text.lstrip().startswith("{"):
            text = _read_text_file(text, "--json-schema")
        return {"json_schema": text}
    if args.regex is not None:
        return {"regex": _argument_text(args.regex, "--regex", False)}
    if args.grammar_file is not None:
        return {"grammar": _read_text_file(args.grammar_file, "--grammar-file")}
    return {}


def _batch_schema(args) -> dict:
    if args.json_schema is None:
        return {}
    text = args.json_schema
    if not text.lstrip().startswith("{"):
        text = _read_text_file(text, "--json-schema")
    return {"json_schema": text}


def _fit_history(tok, messages, room: int):
    """The chat ids, dropping the oldest turns (never the system prompt, never the newest user
    message) until they leave ``room`` tokens or more of the context for the reply."""
    dropped = 0
    system = 1 if messages and messages[0]["role"] == "system" else 0
    while True:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        if len(ids) <= room or len(messages) - system <= 1:
            return messages, ids, dropped
        # drop the oldest user turn and the assistant reply that followed it
        del messages[system]
        dropped += 1
        if len(messages) - system > 1 and messages[system]["role"] == "assistant":
            del messages[system]
            dropped += 1


def cmd_chat(args) -> int:
    system = _argument_text(args.system, "--system", args.escape)
    model, tok = _load(args)
    context = _context(args, model)
    messages = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("npllm chat — /reset clears the history, /exit or Ctrl-D quits.", file=sys.stderr)
    reply_room = max(1, min(args.max_new_tokens, context // 2))  # keep room for an answer
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        raw = sys.stdin.buffer.readline()
        if not raw:
            return 0
        line = _utf8(raw, "the chat input").strip()
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            messages = messages[:1] if system else []
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        messages, ids, dropped = _fit_history(tok, messages, context - reply_room)
        if dropped:
            print(f"npllm: the conversation outgrew the context of {context} tokens: dropped the oldest "
                  f"{dropped} message(s)", file=sys.stderr)
        if len(ids) >= context:
            raise _UsageError(f"this message makes a prompt of {len(ids)} tokens, more than the context of "
                              f"{context} tokens (-c); write a shorter one")
        reply = _stream(model, tok, ids, args, tok.stop_token_ids, context)
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": reply})


def cmd_info(args) -> int:
    from collections import Counter

    from .cache import kv_cache_bytes

    model, tok = _load(args, need_tokenizer=False)
    c = model.config
    types = Counter(getattr(w, "type_name", str(getattr(w, "dtype", "?")).upper())
                    for w in model.params.values())
    kv16 = kv_cache_bytes(c, 1, args.context, "float16")
    kv_run = kv_cache_bytes(c, 1, args.context, model.kv_dtype)
    rows = [
        ("model", args.model),
        ("architecture", c.model_type),
        ("parameters", f"{model.num_parameters():,}"),
        ("layers", c.num_hidden_layers),
        ("hidden / intermediate", f"{c.hidden_size} / {c.intermediate_size}"),
        ("heads (q / kv), head_dim", f"{c.num_attention_heads} / {c.num_key_value_heads}, {c.head_dim}"),
        ("vocab", c.vocab_size),
        ("max positions", c.max_position_embeddings),
        ("rope_theta", c.rope_theta),
        ("tied embeddings", c.tie_word_embeddings),
        *((("knob " + k, _knob_text(k, v)) for k, v in c.knobs().items()) if c.knobs()
          else [("knobs", "none (every family knob at Llama's value)")]),
        ("tensor types", ", ".join(f"{k}: {v}" for k, v in sorted(types.items()))),
        (f"KV cache for {args.context} tokens",
         f"{kv16:,} bytes in fp16 ({kv16 / 2**20:.1f} MiB); {kv_run:,} bytes as run ({model.kv_dtype}, "
         f"-ctk/-ctv)"),
        ("bos / eos / stop ids", f"{tok.bos_token_id} / {tok.eos_token_id} / {tok.stop_token_ids}"
         if tok is not None else "no tokenizer (no tokenizer.json in the directory)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _knob_text(name, value) -> str:
    """One line for a family knob (lesson 08): per-layer lists are summarised."""
    if name == "layer_types":
        sliding = [i for i, t in enumerate(value) if t == "sliding_attention"]
        full = [i for i, t in enumerate(value) if t != "sliding_attention"]
        return f"{len(sliding)} sliding, {len(full)} full (full: layers {_ranges(full)})"
    if name == "no_rope_layers":
        return f"no RoPE in layers {_ranges([i for i, v in enumerate(value) if not v])}"
    if name == "rope_scaling":
        short = {k: (f"[{len(v)} values]" if isinstance(v, list) else v) for k, v in value.items()}
        return ", ".join(f"{k}={v}" for k, v in short.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _ranges(indices) -> str:
    return ", ".join(str(i) for i in indices) if indices else "none"


def cmd_batch(args) -> int:
    from . import _jit
    from .batch import run

    _jit.set_num_threads(args.threads)
    stops = [process_escapes(t) if args.escape else t for t in (_argument_text(t, "--stop", False) for t in args.stop)]
    summary = run(args.input, args.output, model=args.model, batch_size=args.batch_size, ray=args.ray,
                  workers=args.workers, progress=not args.no_progress, max_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                  seed=args.seed, stop=stops or None, **_batch_schema(args))
    print(f"npllm batch: {summary.written} record(s) and {summary.errors} error row(s) written to "
          f"{summary.output}, {summary.skipped} already there; {summary.completion_tokens} tokens in "
          f"{summary.seconds:.1f} s", file=sys.stderr)
    if summary.interrupted:
        print(f"npllm batch: interrupted; rerun the same command to resume (the ids in {summary.output} "
              "are skipped)", file=sys.stderr)
        return 130
    return 0


def cmd_perplexity(args) -> int:
    from . import _jit
    from .perplexity import perplexity

    if args.reference:
        _jit.use_reference(True)
    if (args.file is None) == (args.file_flag is None):
        raise _UsageError("give the text file once: -f FILE (or as the positional argument)")
    path = args.file if args.file is not None else args.file_flag
    text = _read_text_file(path, "perplexity file")
    model, tok = _load(args)
    limit = model.config.context_length
    if args.context > limit:
        raise _UsageError(f"-c/--context {args.context} is beyond the model's context of {limit} tokens")
    if args.stride is not None and args.stride > args.context:
        raise _UsageError(f"--stride {args.stride} must not exceed -c/--context {args.context}")
    result = perplexity(model, tok, text, context=args.context, stride=args.stride, progress=True)
    print(f"perplexity: {result.perplexity:.4f} over {result.n_scored} tokens "
          f"({result.n_chunks} chunks of {args.context})")
    return 0


def cmd_serve(args) -> int:
    from .serve import serve

    if args.port > 65535:
        raise _UsageError(f"--port must be at most 65535, got {args.port}")
    if args.ctx_size < 2 * args.parallel:
        raise _UsageError(f"-c/--ctx-size {args.ctx_size} leaves fewer than 2 tokens for each of the "
                          f"{args.parallel} slots (-np)")
    return serve(args.model, host=args.host, port=args.port, parallel=args.parallel, ctx_size=args.ctx_size,
                 threads=args.threads, max_queue=args.max_queue, kv_dtype=_kv_dtype(args))


def main(argv=None) -> int:
    from .errors import NpllmError

    args = build_parser().parse_args(argv)
    commands = {"generate": cmd_generate, "chat": cmd_chat, "info": cmd_info, "batch": cmd_batch,
                "perplexity": cmd_perplexity, "serve": cmd_serve}
    try:
        return commands[args.command](args)
    except (NpllmError, _UsageError, FileNotFoundError, IsADirectoryError, PermissionError,
            UnicodeError) as e:
        print(f"npllm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
