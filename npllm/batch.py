"""Lesson 09 (appendix) — offline generation over a JSONL dataset, resumable, with nothing lost.

    npllm.batch.run("prompts.jsonl", "out.jsonl", model="smollm2-135m-instruct", temperature=0)
    npllm batch prompts.jsonl -o out.jsonl --temperature 0          # the same from the shell

Each input line is ``{"id": ..., "prompt": "..."}`` or ``{"id": ..., "messages": [...]}``, with
optional ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``seed`` and ``stop``
(defaults from the arguments).  Each output line is ``{"id", "text", "finish_reason", "usage":
{"prompt_tokens", "completion_tokens"}}``, or ``{"id", "error"}`` for an input line that cannot
run (the run goes on).

How the work is split: records with the same generation settings are sorted by prompt length and
cut into left-padded batches of ``batch_size``, so a batch wastes little on padding and one
batched decode step serves all its rows (decode is memory-bound: 8 rows cost little more than 1).
A record that samples with its own ``seed`` runs alone, so its output is the one ``generate``
gives for that record by itself.  Greedy outputs do not depend on the batch they ran in.

Nothing lost: each finished record is one ``write`` of one whole line, flushed at once.  Rerunning
with the same output file skips the ids already in it (a half-written last line, if the process
was killed mid-write, is dropped first).  Ctrl-C stops after the current batch and says how to
resume.  ``ray=...`` runs the same batches on a Ray Data actor pool (``npllm.batch_ray``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .errors import GenerationParameterError, NpllmError

# llama.cpp's sampling defaults, as in ``npllm generate``
DEFAULTS = dict(max_tokens=128, temperature=0.8, top_p=0.95, top_k=40, min_p=0.05, seed=None, stop=None,
                json_schema=None)
PARAMS = tuple(DEFAULTS)


@dataclass
class BatchSummary:
    """What a run did: records written (or errors written) now, skipped as already done, tokens."""

    written: int = 0
    errors: int = 0
    skipped: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    output: str = ""


@dataclass
class Record:
    id: Any
    prompt: Optional[str]
    messages: Optional[list]
    params: Dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ input
def _check_params(d: dict, defaults: dict) -> Dict[str, Any]:
    """A record's generation settings (its own fields over the defaults), with types checked."""
    p = dict(defaults)
    for key in PARAMS:
        if key not in d:
            continue
        v = d[key]
        if key in ("max_tokens", "top_k", "seed"):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise GenerationParameterError(f"{key} must be a non-negative integer, got {v!r:.40}")
        elif key == "json_schema":  # kept as canonical JSON text: records group by equal schemas
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError as e:
                    raise GenerationParameterError(f"json_schema is not valid JSON ({e.msg})") from None
            if v is not None and not isinstance(v, (dict, bool)):
                raise GenerationParameterError(f"json_schema must be a JSON schema object, got {v!r:.40}")
            v = None if v is None else json.dumps(v, sort_keys=True)
        elif key == "stop":
            if isinstance(v, str):
                v = [v]
            if v is not None and (not isinstance(v, list) or not all(isinstance(s, str) and s for s in v)):
                raise GenerationParameterError(f"stop must be a string or a list of non-empty strings, got {v!r:.60}")
        elif v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise GenerationParameterError(f"{key} must be a number, got {v!r:.40}")
        p[key] = v
    if p["stop"] is not None:
        p["stop"] = tuple(p["stop"])
    return p


def parse_line(line: str, defaults: dict) -> Record:
    """One JSONL line -> Record; ``GenerationParameterError`` naming what is wrong."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise GenerationParameterError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(d, dict):
        raise GenerationParameterError(f"a line must be a JSON object, got {type(d).__name__}")
    if "id" not in d or isinstance(d["id"], (dict, list, float, bool)) or d["id"] is None:
        raise GenerationParameterError("each line needs an \"id\" (a string or an integer)")
    prompt, messages = d.get("prompt"), d.get("messages")
    if (prompt is None) == (messages is None):
        raise GenerationParameterError("each line needs exactly one of \"prompt\" and \"messages\"")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise GenerationParameterError("prompt must be a non-empty string")
    if messages is not None and (not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)):
        raise GenerationParameterError("messages must be a non-empty list of {\"role\": str, \"content\": str}")
    return Record(d["id"], prompt, messages, _check_params(d, defaults))


def _id_of(line: str):
    """The id of a line that is valid JSON with an id, else None (for error rows of bad lines)."""
    try:
        d = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    return d.get("id") if isinstance(d, dict) and isinstance(d.get("id"), (str, int)) else None


def read_input(path: str, defaults: dict) -> Iterator[Tuple[int, Optional[Record], Optional[dict]]]:
    """(line number, Record or None, error row or None) for each non-blank line of ``path``."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                yield n, None, {"id": None, "line": n, "error": "the line is not valid UTF-8"}
                continue
            if not line:
                continue
            try:
                yield n, parse_line(line, defaults), None
            except GenerationParameterError as e:
                yield n, None, {"id": _id_of(line), "line": n, "error": str(e)}


# ------------------------------------------------------------------ output
def _key(record_id, line=None) -> str:
    """How a record is known in the output: its id (1 and "1" differ), or, for an error row of a
    line without a usable id, its line number."""
    return json.dumps(record_id) if record_id is not None else f"#line {line}"


def _row_key(row: dict) -> Optional[str]:
    if row.get("id") is not None:
        return _key(row["id"])
    return _key(None, row["line"]) if isinstance(row.get("line"), int) else None


def done_ids(path: str) -> set:
    """The ids already in an output file; a last line without its newline (a write cut short) is
    removed, so the file holds whole lines only."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            data = data[:data.rfind(b"\n") + 1]
    ids = set()
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        key = _row_key(row) if isinstance(row, dict) else None
        if key is not None:
            ids.add(key)
    return ids


class Writer:
    """Appends whole lines, flushed one by one; skips ids it has written (Ray may retry a batch)."""

    def __init__(self, path: str, seen: set):
        self.path, self.seen = path, seen
        self.f = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> bool:
        key = _row_key(row)
        if key is not None and key in self.seen:
            return False
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")   # one write of one whole line
        self.f.flush()
        if key is not None:
            self.seen.add(key)
        return True

    def close(self):
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


# ------------------------------------------------------------------ the work
def plan_batches(records: List[Record], batch_size: int, lengths: Dict[int, int]) -> List[List[Record]]:
    """Records with equal settings, sorted by prompt length, cut into batches; a record that
    samples with its own seed is a batch of its own."""
    groups: Dict[tuple, List[Record]] = {}
    for r in records:
        groups.setdefault(tuple(r.params[k] for k in PARAMS), []).append(r)
    batches = []
    for key, rs in groups.items():
        p = dict(zip(PARAMS, key))
        alone = p["seed"] is not None and (p["temperature"] or 0) > 0
        rs = sorted(rs, key=lambda r: lengths[id(r)])
        size = 1 if alone else batch_size
        batches += [rs[i:i + size] for i in range(0, len(rs), size)]
    return batches


def encode(tok, r: Record) -> List[int]:
    if r.messages is not None:
        return tok.apply_chat_template(r.messages, add_generation_prompt=True)
    return tok.encode(r.prompt)


def generate_batch(model, tok, records: List[Record], encoded: List[List[int]]) -> List[dict]:
    """One left-padded ``generate`` call for records that share their settings -> output rows."""
    from .streaming import StopStringCriteria

    p = records[0].params
    T = max(len(e) for e in encoded)
    ids = np.zeros((len(records), T), np.int64)
    mask = np.zeros_like(ids)
    for b, e in enumerate(encoded):
        ids[b, T - len(e):], mask[b, T - len(e):] = e, 1
    stops = list(p["stop"] or [])
    structured = {} if p.get("json_schema") is None else {"json_schema": p["json_schema"], "tokenizer": tok}
    out = model.generate(ids, attention_mask=mask, max_new_tokens=p["max_tokens"], temperature=p["temperature"],
                         top_p=p["top_p"], top_k=p["top_k"], min_p=p["min_p"], seed=p["seed"],
                         eos_token_id=tok.stop_token_ids, pad_token_id=tok.pad_token_id or 0,
                         stopping_criteria=[StopStringCriteria(tok, stops)] if stops else None,
                         return_dict_in_generate=True, **structured)
    rows = []
    for b, r in enumerate(records):
        n = int(out.num_new_tokens[b])
        text = tok.decode(out.sequences[b, T:T + n].tolist(), skip_special_tokens=True)
        for s in stops:  # the stop string and what follows it are not part of the text
            if s in text:
                text = text[:text.index(s)]
        reason = out.stop_reasons[b]
        rows.append({"id": r.id, "text": text, "finish_reason": "length" if reason == "length" else "stop",
                     "usage": {"prompt_tokens": len(encoded[b]), "completion_tokens": n}})
    return rows


def run_batches(model, tok, batches, writer: Writer, summary: BatchSummary, stop_requested, progress=None):
    """Generate batch after batch in this process, writing each record as its batch finishes."""
    start = time.perf_counter()
    for batch in batches:
        if stop_requested():
            summary.interrupted = True
            return
        encoded = [encode(tok, r) for r in batch]
        for row in generate_batch(model, tok, batch, encoded):
            writer.write(row)
            summary.written += 1
            summary.completion_tokens += row["usage"]["completion_tokens"]
        if progress is not None:
            progress.update(len(batch))
            progress.set_postfix(tok_s=f"{summary.completion_tokens / max(time.perf_counter() - start, 1e-9):.1f}")


def _prepare(input_path, output_path, defaults, tok, context):
    """Read the input, skip what the output already holds, turn bad records into error rows."""
    seen = done_ids(output_path)
    todo, errors, skipped, lengths = [], [], 0, {}
    schemas: Dict[str, Optional[str]] = {}  # each distinct json_schema compiled once
    for n, record, error in read_input(input_path, defaults):
        key = _key(record.id) if record is not None else _key(error.get("id"), n)
        if key in seen:
            skipped += 1
            continue
        if error is not None:
            errors.append(error)
            continue
        try:
            k = len(encode(tok, record))
        except NpllmError as e:
            errors.append({"id": record.id, "line": n, "error": str(e)})
            continue
        if k + 1 > context:
            errors.append({"id": record.id, "line": n,
                           "error": f"the prompt is {k} tokens, more than the model's context of {context} - 1"})
            continue
        schema = record.params.get("json_schema")
        if schema is not None:
            if schema not in schemas:
                schemas[schema] = _schema_problem(tok, schema)
            problem = schemas[schema]
            if problem:
                errors.append({"id": record.id, "line": n, "error": problem})
                continue
        lengths[id(record)] = k
        todo.append(record)
    return seen, todo, errors, skipped, lengths


def _schema_problem(tok, schema: str) -> Optional[str]:
    """None when ``schema`` compiles (npllm.structured), else the error naming json_schema."""
    try:
        from .structured import Constraint

        Constraint(tok, json_schema=schema)
    except NpllmError as e:
        return str(e)
    return None


def run(input_path, output_path, model=None, *, batch_size: int = 8, ray=None, workers: Optional[int] = None,
        progress: bool = True, **defaults) -> BatchSummary:
    """Generate for every record of ``input_path`` that ``output_path`` does not hold yet.

    ``model``: an alias, a ``.gguf`` file, an HF directory (default: the default model).
    ``defaults``: ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``seed``, ``stop``
    (llama.cpp's defaults, as ``npllm generate``) and ``json_schema`` (structured output, the
    ``structured`` extra).  ``ray``: None (in this process), ``"local"``
    (start a local Ray) or a cluster address; ``workers``: Ray actors (default 2).
    """
    unknown = sorted(set(defaults) - set(PARAMS))
    if unknown:
        raise GenerationParameterError(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(PARAMS)})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise GenerationParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    defaults = _check_params(defaults, DEFAULTS)
    input_path, output_path = os.fspath(input_path), os.fspath(output_path)
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"input file not found: {input_path}")
    from .loading import load

    if ray is None:
        m, tok = load(model)
    else:  # the workers load the model; the driver only needs the tokenizer to plan
        from .tokenizer import Tokenizer

        m, tok = None, Tokenizer.from_pretrained(model)
    if tok is None:
        raise GenerationParameterError(f"{model} has no tokenizer (no tokenizer.json): batch needs one")
    context = m.config.context_length if m is not None else _context_of(model)
    seen, todo, errors, skipped, lengths = _prepare(input_path, output_path, defaults, tok, context)
    summary = BatchSummary(skipped=skipped, output=output_path)
    writer = Writer(output_path, seen)
    for e in errors:
        writer.write(e)
        summary.errors += 1
    batches = plan_batches(todo, batch_size, lengths)
    flag: List[bool] = []
    previous = _install_sigint(flag)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="rec", desc="batch", file=sys.stderr, dynamic_ncols=True)
    try:
        if ray is None:
            run_batches(m, tok, batches, writer, summary, lambda: bool(flag), bar)
        else:
            from .batch_ray import run_on_ray

            run_on_ray(model, batches, writer, summary, lambda: bool(flag), bar, address=ray,
                       workers=workers or 2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if bar is not None:
            bar.close()
        writer.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _context_of(model) -> int:
    from .models import resolve_model

    path = resolve_model(model)
    if os.path.isdir(path):
        from .io.safetensors import read_hf_directory

        return read_hf_directory(path).config.context_length
    from .io.gguf import read_gguf

    return read_gguf(path).config.context_length


def _install_sigint(flag: list):
    """First Ctrl-C: finish the current batch, then stop.  Second: stop now (KeyboardInterrupt)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if flag:
            raise KeyboardInterrupt
        flag.append(True)
        print("\nnpllm batch: stopping after the current batch (Ctrl-C again to stop now)", file=sys.stderr)

    return signal.signal(signal.SIGINT, handler)
