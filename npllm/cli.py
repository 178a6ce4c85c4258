"""The ``npllm`` command line (lesson 06): generate, chat, info, perplexity.

Flags follow the task names of the issue and accept llama.cpp's spellings too
(``-m``, ``-n/--n-predict``, ``--temp``, ``--repeat-penalty``, ``-s``, ``-t``).
Sampling defaults are llama.cpp's: temperature 0.8, top-k 40, top-p 0.95,
min-p 0.05; ``--temperature 0`` means greedy.

A bad input prints one line to stderr (no traceback) and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_MODEL = "smollm2-135m-instruct"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"a .gguf file, an HF directory, or an alias (default: {DEFAULT_MODEL})")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="threads for Numba kernels and BLAS (default: $NPLLM_NUM_THREADS or all cores)")
    p.add_argument("--no-progress", action="store_true", help="hide the loading progress bar")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--max-new-tokens", "--n-predict", dest="max_new_tokens", type=int, default=128)
    p.add_argument("--temperature", "--temp", dest="temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repetition-penalty", "--repeat-penalty", dest="repetition_penalty", type=float,
                   default=1.0)
    p.add_argument("-s", "--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when this text appears (repeatable); the stop text is not printed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npllm", description="A NumPy LLaMA-family language model.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="continue a prompt, streaming the text to stdout")
    _add_model_args(g)
    _add_sampling_args(g)
    g.add_argument("prompt", nargs="?", help="the prompt (default: read from -p or stdin)")
    g.add_argument("-p", "--prompt", dest="prompt_opt", default=None)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    g.add_argument("--chat-template", dest="chat_template", metavar="FILE", default=None,
                   help="a Jinja chat template file, for models whose file has none (implies --chat)")

    c = sub.add_parser("chat", help="interactive multi-turn chat using the model's chat template")
    _add_model_args(c)
    _add_sampling_args(c)
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--chat-template", dest="chat_template", metavar="FILE", default=None,
                   help="a Jinja chat template file, for models whose file has none")

    i = sub.add_parser("info", help="architecture, parameters, tensor types and KV-cache size")
    _add_model_args(i)
    i.add_argument("-c", "--context", type=int, default=2048, help="tokens of context for the KV-cache size")

    pp = sub.add_parser("perplexity", help="perplexity of a text file (llama.cpp's method)")
    _add_model_args(pp)
    pp.add_argument("file")
    pp.add_argument("-c", "--context", type=int, default=512, help="tokens per chunk")
    pp.add_argument("--stride", type=int, default=None,
                    help="sliding window stride (HF method); default: llama.cpp's halves")
    pp.add_argument("--reference", action="store_true",
                    help="run the pure-NumPy reference path instead of the Numba kernels")
    return parser


def _load(args):
    from . import _jit
    from .loading import load

    _jit.set_num_threads(args.threads)
    template = _read_template(getattr(args, "chat_template", None))
    model, tok = load(args.model, progress=not args.no_progress)
    if template is not None:
        tok.chat_template = template
    return model, tok


def _read_template(path):
    """The text of a --chat-template FILE (read before the model loads, so a typo fails fast)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise _UsageError(f"--chat-template {path}: {e.strerror or e}") from None


def _sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed)


def _stream(model, tokenizer, ids, args, stop_token_ids) -> str:
    """Generate from ``ids`` and stream the text to stdout; returns the text."""
    import numpy as np

    from .streaming import TextStreamer

    streamer = TextStreamer(tokenizer, stop_strings=args.stop,
                            on_text=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    model.generate(np.array([ids], dtype=np.int64), eos_token_id=stop_token_ids, streamer=streamer,
                   stopping_criteria=[streamer.stopping_criterion()], **_sampling_kwargs(args))
    return streamer.text


def cmd_generate(args) -> int:
    prompt = args.prompt if args.prompt is not None else args.prompt_opt
    if prompt is None:
        prompt = sys.stdin.read()
    if not prompt:
        raise _UsageError("the prompt is empty")
    model, tok = _load(args)
    if args.chat or args.chat_template:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    else:
        ids = tok.encode(prompt)
    _stream(model, tok, ids, args, tok.stop_token_ids)
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    model, tok = _load(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("npllm chat — /reset clears the history, /exit or Ctrl-D quits.", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            messages = messages[:1] if args.system else []
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        reply = _stream(model, tok, ids, args, tok.stop_token_ids)
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": reply})


def cmd_info(args) -> int:
    from collections import Counter

    from .cache import kv_cache_bytes

    model, tok = _load(args)
    c = model.config
    types = Counter(getattr(w, "type_name", str(getattr(w, "dtype", "?")).upper())
                    for w in model.params.values())
    kv16 = kv_cache_bytes(c, 1, args.context, "float16")
    kv_run = kv_cache_bytes(c, 1, args.context, model.dtype)
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
         f"{kv16:,} bytes in fp16 ({kv16 / 2**20:.1f} MiB); {kv_run:,} bytes as run ({model.dtype})"),
        ("bos / eos / stop ids", f"{tok.bos_token_id} / {tok.eos_token_id} / {tok.stop_token_ids}"),
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


def cmd_perplexity(args) -> int:
    from . import _jit
    from .perplexity import perplexity

    if args.reference:
        _jit.use_reference(True)
    model, tok = _load(args)
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    result = perplexity(model, tok, text, context=args.context, stride=args.stride, progress=True)
    print(f"perplexity: {result.perplexity:.4f} over {result.n_scored} tokens "
          f"({result.n_chunks} chunks of {args.context})")
    return 0


class _UsageError(Exception):
    pass


def main(argv=None) -> int:
    from .errors import NpllmError

    args = build_parser().parse_args(argv)
    commands = {"generate": cmd_generate, "chat": cmd_chat, "info": cmd_info,
                "perplexity": cmd_perplexity}
    try:
        return commands[args.command](args)
    except (NpllmError, _UsageError, FileNotFoundError, IsADirectoryError, PermissionError,
            UnicodeDecodeError) as e:
        print(f"npllm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
