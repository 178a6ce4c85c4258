"""Lesson 09 — ``npllm serve``: an OpenAI-compatible HTTP face for the engine (``npllm.engine``).

This module only validates, translates and streams; the batching lives in the engine.

    POST /v1/chat/completions, /v1/completions   streaming (SSE ``data: {...}``, then
                                                 ``data: [DONE]``) and not
    GET  /v1/models, /health (503 while loading), /metrics (Prometheus)
    POST /tokenize, /detokenize                  (llama-server's shapes)

Every bad input gets HTTP 400 with the OpenAI error object
``{"error": {"message", "type", "param", "code"}}``, its message naming the parameter; unknown
fields are ignored; an unknown route is 404.  A client that disconnects cancels its request
(queued, prefilling or decoding), and a full queue answers 429 with ``Retry-After``.

Needs the ``serve`` extra: ``pip install "npllm[serve]"`` (FastAPI, uvicorn, sse-starlette,
prometheus_client).
"""


import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from numbers import Integral, Real
from typing import List, Optional

from .engine import Engine, Finished, QueueFullError, SamplingParams, Token
from .errors import NpllmError

MAX_TOP_LOGPROBS = 20        # chat (OpenAI's limit)
MAX_LEGACY_LOGPROBS = 5      # completions (OpenAI's limit)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class BadRequest(Exception):
    """A request parameter is wrong: HTTP 400 naming ``param``."""

    def __init__(self, param: Optional[str], message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.message, self.status, self.kind = param, message, status, kind


def error_body(message: str, kind: str, param: Optional[str], code: int) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ============================================================== request fields
_MISSING = object()


def _get(body: dict, name: str):
    value = body.get(name, _MISSING)
    return _MISSING if value is None else value


def _int(body, name, default, low=None, high=None):
    v = _get(body, name)
    if v is _MISSING:
        return default
    if isinstance(v, bool) or not (isinstance(v, Integral) or (isinstance(v, float) and v.is_integer())):
        raise BadRequest(name, f"{name} must be an integer, got {json.dumps(v)[:40]}")
    v = int(v)
    if (low is not None and v < low) or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise BadRequest(name, f"{name} must be {rng}, got {v}")
    return v


def _num(body, name, default, low, high, low_open=False):
    v = _get(body, name)
    if v is _MISSING:
        return default
    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
        raise BadRequest(name, f"{name} must be a number, got {json.dumps(v)[:40]}")
    if v < low or v > high or (low_open and v == low):
        lo = f"> {low}" if low_open else f">= {low}"
        raise BadRequest(name, f"{name} must be {lo} and <= {high}, got {v}")
    return float(v)


def _bool(body, name, default):
    v = _get(body, name)
    if v is _MISSING:
        return default
    if not isinstance(v, bool):
        raise BadRequest(name, f"{name} must be true or false, got {json.dumps(v)[:40]}")
    return v


def _stops(body) -> List[str]:
    v = _get(body, "stop")
    if v is _MISSING:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest("stop", "stop must be a string or a list of strings")
    if any(s == "" for s in stops):
        raise BadRequest("stop", "stop strings must not be empty")
    return stops


def _sampling(body, max_tokens: int, logprobs: Optional[int]) -> SamplingParams:
    top_k = _int(body, "top_k", 0, -1)
    seed = _int(body, "seed", None, -(2 ** 63), 2 ** 64 - 1)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(top_k, 0),
        min_p=_num(body, "min_p", 0.0, 0.0, 1.0),
        frequency_penalty=_num(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_num(body, "presence_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_num(body, "repetition_penalty", 1.0, 0.0, 100.0, low_open=True),
        stop=_stops(body), seed=None if seed is None else seed % 2 ** 64, logprobs=logprobs,
        ignore_eos=_bool(body, "ignore_eos", False))


def _response_format(body, tokenizer, vocab_size, eos):
    """``response_format`` -> None (plain text) or an ``npllm.structured.Constraint`` (a template;
    the engine gives each request its own copy).  OpenAI's ``{"type": "json_object"}`` is any JSON
    object (llama-server's ``"schema"`` key may narrow it); ``{"type": "json_schema", "json_schema":
    {"schema": S}}`` is schema S."""
    v = _get(body, "response_format")
    if v is _MISSING or v is None:
        return None
    if not isinstance(v, dict) or not isinstance(v.get("type"), str):
        raise BadRequest("response_format", 'response_format must be an object like {"type": "text"}')
    kind = v["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema = v.get("schema", {"type": "object"})
        where = "response_format.schema"
    elif kind == "json_schema":
        js = v.get("json_schema")
        if not isinstance(js, dict) or "schema" not in js:
            raise BadRequest("response_format", 'response_format of type json_schema needs '
                                                '"json_schema": {"name": ..., "schema": {...}}')
        schema, where = js["schema"], "response_format.json_schema.schema"
    else:
        raise BadRequest("response_format", f"response_format type must be text, json_object or json_schema, "
                                            f"got {kind!r}")
    if not isinstance(schema, (dict, bool)):
        raise BadRequest("response_format", f"{where} must be a JSON schema object")
    try:
        from .structured import Constraint

        return Constraint(tokenizer, json_schema=schema, eos_token_id=list(eos), vocab_size=vocab_size)
    except NpllmError as e:  # GrammarError names json_schema; llguidance missing
        raise BadRequest("response_format", f"{where}: {e}") from None


def _messages(body) -> list:
    msgs = body.get("messages")
    if msgs is None:
        raise BadRequest("messages", "messages is required")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(where, f"{where} must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)}")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise BadRequest(f"{where}.content", f"{where}.content[{j}] must be a text part "
                                                         '{"type": "text", "text": "..."}')
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise BadRequest(f"{where}.content", f"{where}.content must be a string or a list of text parts")
        out.append({"role": ROLES[role], "content": content})
    return out


# ============================================================== the app
class _State:
    def __init__(self):
        self.engine: Optional[Engine] = None
        self.tokenizer = None
        self.model_id = "npllm"
        self.error: Optional[str] = None
        self.created = int(time.time())


def create_app(load, n_slots: int = 4, ctx_size: int = 4096, threads: Optional[int] = None,
               max_queue: int = 64, model_id: str = "npllm", log=None, engine_thread: bool = True):
    """The FastAPI app.  ``load()`` returns ``(model, tokenizer)``; it runs in a thread at startup,
    so /health answers 503 until it is done.  ``ctx_size`` is shared by the slots, as in llama-server.

    ``engine_thread=False``: the app neither loads nor starts the engine; the caller runs
    ``app.state.load_model()`` and then ``app.state.npllm.engine.run()`` in its own (main) thread,
    as ``serve`` does."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from sse_starlette.sse import EventSourceResponse
    from starlette.exceptions import HTTPException

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    st = _State()
    st.model_id = model_id
    reg = CollectorRegistry()
    m_requests = Counter("npllm_requests", "HTTP requests", ["endpoint", "status"], registry=reg)
    m_prompt = Counter("npllm_prompt_tokens", "prompt tokens processed", registry=reg)
    m_completion = Counter("npllm_completion_tokens", "tokens generated", registry=reg)
    m_ttft = Histogram("npllm_time_to_first_token_seconds", "from submission to the first token", registry=reg,
                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
    Gauge("npllm_queue_depth", "requests waiting for a slot", registry=reg).set_function(
        lambda: st.engine.queue_depth if st.engine else 0)
    Gauge("npllm_busy_slots", "slots holding a request", registry=reg).set_function(
        lambda: st.engine.busy_slots if st.engine else 0)
    Gauge("npllm_slots", "slots", registry=reg).set(n_slots)

    def load_model():
        try:
            model, tok = load()
            if tok is None:
                raise NpllmError("the model has no tokenizer")
            st.tokenizer = tok
            engine = Engine(model, tok, n_slots=n_slots, ctx_per_slot=max(2, ctx_size // n_slots),
                            max_queue=max_queue, threads=threads)
            engine.warm_up()
            st.engine = engine.start() if engine_thread else engine
            log(f"npllm serve: model {model_id} ready, {n_slots} slots of {st.engine.ctx} tokens")
        except Exception as e:  # /health reports it
            st.error = f"{type(e).__name__}: {e}"
            log(f"npllm serve: loading failed: {st.error}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if engine_thread:
            threading.Thread(target=load_model, name="npllm-load", daemon=True).start()
        yield
        if st.engine is not None:
            st.engine.shutdown()

    app = FastAPI(title="npllm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.load_model, app.state.npllm = load_model, st

    def err(status, message, kind, param=None, headers=None):
        return JSONResponse(error_body(message, kind, param, status), status_code=status, headers=headers)

    @app.exception_handler(BadRequest)
    async def _bad(request, e: BadRequest):
        return err(e.status, e.message, e.kind, e.param, headers={"Retry-After": "1"} if e.status == 429 else None)

    @app.exception_handler(HTTPException)
    async def _http(request, e):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return err(e.status_code, message, kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e):
        return err(400, str(e), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _crash(request, e):  # a bug: report it, keep serving
        log(f"npllm serve: internal error: {type(e).__name__}: {e}")
        return err(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    class LogRequests:
        """One log line per request, when its response (streamed or not) is complete; counts
        requests by endpoint and status.  (A plain ASGI middleware: Starlette's BaseHTTPMiddleware
        would wrap every streamed response and its disconnect messages.)"""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            t0, status = time.perf_counter(), [500]

            async def send_and_note(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_and_note)
            finally:
                path = scope.get("path", "")
                m_requests.labels(path if status[0] != 404 else "other", str(status[0])).inc()
                client = scope.get("client") or ("-",)
                log(f'{client[0]} "{scope.get("method")} {path}" {status[0]} '
                    f"{1000 * (time.perf_counter() - t0):.0f} ms")

    app.add_middleware(LogRequests)

    def ready():
        if st.engine is None:
            raise BadRequest(None, st.error or "the model is loading", 503, "unavailable_error")
        return st.engine

    async def body_of(request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(None, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest(None, "the body must be a JSON object")
        if "model" in body and body["model"] is not None and not isinstance(body["model"], str):
            raise BadRequest("model", "model must be a string")
        return body

    # ------------------------------------------------------------------ plain endpoints
    @app.get("/health")
    async def health():
        if st.engine is None:
            return err(503, st.error or "loading model", "unavailable_error")
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": st.model_id, "object": "model", "created": st.created,
                                            "owned_by": "npllm"}]}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        ready()
        body = await body_of(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise BadRequest("content", "content must be a string")
        ids = st.tokenizer.encode(content, add_special_tokens=_bool(body, "add_special", False))
        if _bool(body, "with_pieces", False):
            return {"tokens": [{"id": i, "piece": st.tokenizer.decode([i])} for i in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        ready()
        body = await body_of(request)
        ids = body.get("tokens")
        V = st.tokenizer.vocab_size
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < V
                                                for i in ids):
            raise BadRequest("tokens", f"tokens must be a list of token ids in [0, {V})")
        return {"content": st.tokenizer.decode(ids, skip_special_tokens=False)}

    # ------------------------------------------------------------------ completions
    def submit_all(engine, prompts, params_list, pname):
        """Submit every choice; on a failure cancel those already queued."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        reqs = []

        class Sink:  # the engine thread puts events here; they land on this request's loop
            def __init__(self, index):
                self.index = index

            def put(self, ev):
                loop.call_soon_threadsafe(events.put_nowait, (self.index, ev))

        try:
            for i, (prompt, params) in enumerate(zip(prompts, params_list)):
                reqs.append(engine.submit(prompt, params, events=Sink(i)))
        except QueueFullError as e:
            for r in reqs:
                r.cancel()
            raise BadRequest(None, str(e), 429, "rate_limit_error") from None
        except NpllmError as e:
            for r in reqs:
                r.cancel()
            raise BadRequest(pname, f"{pname}: {e}") from None
        return reqs, events

    def token_text(tid):
        return st.tokenizer.decode([tid])

    def chat_logprob(ev: Token):
        text = token_text(ev.token_id)
        top = [{"token": token_text(i), "logprob": lp, "bytes": list(token_text(i).encode())}
               for i, lp in (ev.top_logprobs or [])]
        return {"token": text, "logprob": ev.logprob, "bytes": list(text.encode()), "top_logprobs": top}

    def finish_reason(ev: Finished):
        return "length" if ev.reason == "length" else "stop"

    async def run(request, body, chat: bool):
        engine = ready()
        ctx = engine.ctx
        if chat:
            msgs = _messages(body)
            try:
                prompt = st.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
            except NpllmError as e:
                raise BadRequest("messages", f"messages: {e}") from None
            prompts, pname = [prompt], "messages"
            if _get(body, "max_completion_tokens") is not _MISSING:
                max_tokens = _int(body, "max_completion_tokens", None, 1)
            else:
                max_tokens = _int(body, "max_tokens", None, 1)
            lp = _bool(body, "logprobs", False)
            top = _int(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
            if top is not None and not lp:
                raise BadRequest("top_logprobs", "top_logprobs needs logprobs: true")
            logprobs = (top or 0) if lp else None
        else:
            prompts, pname = completion_prompts(body), "prompt"
            max_tokens = _int(body, "max_tokens", 16, 1)
            logprobs = _int(body, "logprobs", None, 0, MAX_LEGACY_LOGPROBS)
            if _bool(body, "echo", False):
                raise BadRequest("echo", "echo is not supported")
            if _get(body, "suffix") is not _MISSING:
                raise BadRequest("suffix", "suffix is not supported")
        n = _int(body, "n", 1, 1)
        if n > engine.n_slots:
            raise BadRequest("n", f"n must be <= the server's {engine.n_slots} slots (-np/--parallel), got {n}")
        stream = _bool(body, "stream", False)
        opts = _get(body, "stream_options")
        if opts is not _MISSING and not isinstance(opts, dict):
            raise BadRequest("stream_options", "stream_options must be an object")
        include_usage = stream and _bool(opts if opts is not _MISSING else {}, "include_usage", False)
        constraint = _response_format(body, st.tokenizer, engine.model.config.vocab_size, engine.eos)
        for p in prompts:
            if len(p) >= ctx:
                raise BadRequest(pname, f"{pname}: the prompt has {len(p)} tokens, but a slot holds {ctx} "
                                        "(and needs room for at least one new token)", kind="exceed_context_size_error")
        base = _sampling(body, 1, logprobs)
        params_list, choice_prompts = [], []
        for p in prompts:
            for j in range(n):
                room = ctx - len(p)
                seed = None if base.seed is None else (base.seed + j) % 2 ** 64
                params_list.append(SamplingParams(**{**base.__dict__, "max_tokens": min(max_tokens or room, room),
                                                     "seed": seed, "constraint": constraint}))
                choice_prompts.append(p)
        reqs, events = submit_all(engine, choice_prompts, params_list, pname)
        prompt_tokens = sum(len(p) for p in prompts)
        m_prompt.inc(prompt_tokens)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": st.model_id}

        def done_metrics(r, ev):
            m_completion.inc(ev.completion_tokens)
            if r.first_token is not None:
                m_ttft.observe(r.first_token - r.submitted)

        if stream:
            return EventSourceResponse(stream_events(reqs, events, head, chat, include_usage, done_metrics,
                                                     prompt_tokens), ping=10, sep="\n")
        return await collect(request, reqs, events, head, chat, done_metrics, prompt_tokens)

    def completion_prompts(body):
        p = body.get("prompt")
        tok = st.tokenizer
        V = tok.vocab_size
        bad = BadRequest("prompt", "prompt must be a non-empty string, a list of strings, a list of token ids "
                                   "or a list of lists of token ids")

        def ids_ok(x):
            return isinstance(x, list) and x and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

        if isinstance(p, str):
            items = [p]
        elif ids_ok(p):
            items = [p]
        elif isinstance(p, list) and p and all(isinstance(x, str) or ids_ok(x) for x in p):
            items = p
        else:
            raise bad
        out = []
        for x in items:
            if isinstance(x, str):
                if x == "":
                    raise BadRequest("prompt", "prompt must not be empty")
                out.append(tok.encode(x))
            else:
                if not all(0 <= i < V for i in x):
                    raise BadRequest("prompt", f"prompt token ids must be in [0, {V})")
                out.append(list(x))
        return out

    async def watch_disconnect(request, reqs):
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                for r in reqs:
                    r.cancel()
                return

    async def collect(request, reqs, events, head, chat, done_metrics, prompt_tokens):
        texts = [""] * len(reqs)
        lps: List[list] = [[] for _ in reqs]
        finish: List[Optional[Finished]] = [None] * len(reqs)
        watcher = asyncio.ensure_future(watch_disconnect(request, reqs))
        try:
            while any(f is None for f in finish):
                i, ev = await events.get()
                if isinstance(ev, Token):
                    texts[i] += ev.text
                    if ev.logprob is not None:
                        lps[i].append(ev)
                else:
                    texts[i] += ev.text
                    finish[i] = ev
                    done_metrics(reqs[i], ev)
        finally:
            watcher.cancel()
            for r in reqs:
                r.cancel()  # harmless when finished; frees the slots when this task is cancelled
        bad = next((f for f in finish if f.reason == "error"), None)
        if bad is not None:
            raise BadRequest(None, f"generation failed: {bad.text}", 500, "server_error")
        choices = []
        for i, (text, f) in enumerate(zip(texts, finish)):
            if chat:
                c = {"index": i, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason(f),
                     "logprobs": {"content": [chat_logprob(e) for e in lps[i]]} if reqs[i].params.logprobs is not None
                     else None}
            else:
                c = {"index": i, "text": text, "finish_reason": finish_reason(f),
                     "logprobs": legacy_logprobs(lps[i]) if reqs[i].params.logprobs is not None else None}
            choices.append(c)
        completion = sum(f.completion_tokens for f in finish)
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}

    def legacy_logprobs(evs):
        tokens, offsets, pos = [], [], 0
        for e in evs:
            t = token_text(e.token_id)
            tokens.append(t)
            offsets.append(pos)
            pos += len(t)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in evs],
                "top_logprobs": [{token_text(i): lp for i, lp in (e.top_logprobs or [])} for e in evs],
                "text_offset": offsets}

    async def stream_events(reqs, events, head, chat, include_usage, done_metrics, prompt_tokens):
        finished = [None] * len(reqs)

        def chunk(i, text, reason=None, ev=None, role=False):
            if chat:
                delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
                c = {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}
                if ev is not None and ev.logprob is not None:
                    c["logprobs"] = {"content": [chat_logprob(ev)]}
            else:
                c = {"index": i, "text": text, "finish_reason": reason,
                     "logprobs": legacy_logprobs([ev]) if ev is not None and ev.logprob is not None else None}
            return json.dumps({**head, "choices": [c], **({"usage": None} if include_usage else {})})

        try:
            if chat:
                for i in range(len(reqs)):
                    yield {"data": chunk(i, "", role=True)}
            while any(f is None for f in finished):
                i, ev = await events.get()
                if isinstance(ev, Token):
                    if ev.text or ev.logprob is not None:
                        yield {"data": chunk(i, ev.text, ev=ev)}
                    continue
                finished[i] = ev
                done_metrics(reqs[i], ev)
                if ev.reason == "error":
                    yield {"data": json.dumps(error_body(f"generation failed: {ev.text}", "server_error", None, 500))}
                    break
                yield {"data": chunk(i, ev.text, finish_reason(ev))}
            if include_usage:
                completion = sum(f.completion_tokens for f in finished if f is not None)
                yield {"data": json.dumps({**head, "choices": [], "usage": {
                    "prompt_tokens": prompt_tokens, "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion}})}
            yield {"data": "[DONE]"}
        finally:
            for r in reqs:
                r.cancel()  # a disconnected client: free its slots at once

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        ready()
        return await run(request, await body_of(request), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        ready()
        return await run(request, await body_of(request), chat=False)

    app.state.npllm = st
    return app


# ============================================================== the command
def serve(model: Optional[str] = None, host: str = "127.0.0.1", port: int = 8080, parallel: int = 4,
          ctx_size: int = 4096, threads: Optional[int] = None, max_queue: int = 64, kv_dtype=None) -> int:
    """Run the server until SIGTERM/SIGINT (``npllm serve``); port 0 picks a free port.
    Prints ``npllm serve: listening on http://HOST:PORT`` once the socket is bound.  ``kv_dtype``:
    the slots' KV cache storage (``npllm.load``'s; ``-ctk``/``-ctv``)."""
    try:
        import uvicorn
    except ImportError:
        raise NpllmError('npllm serve needs the serve extra: pip install "npllm[serve]"') from None
    from .loading import load

    def loader():
        return load(model, progress=False, kv_dtype=kv_dtype)

    model_id = os.path.basename(model) if model else "smollm2-135m-instruct"
    app = create_app(loader, n_slots=parallel, ctx_size=ctx_size, threads=threads, max_queue=max_queue,
                     model_id=model_id, engine_thread=False)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise NpllmError(f"--host/--port: cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    print(f"npllm serve: listening on http://{host}:{bound} ({parallel} slots, -c {ctx_size})",
          file=sys.stderr, flush=True)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # The HTTP server runs in a thread, where signals cannot be caught; the main thread's
            # handlers below ask it to stop.  (uvicorn's own would re-raise the signal after a
            # graceful shutdown, exit status 143; npllm drains, then exits 0.)
            yield

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30,
                            lifespan="on")
    server = Server(config)
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="npllm-http", daemon=True)
    previous = {s: signal.signal(s, lambda *_: server.handle_exit(s, None)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        http.start()
        # The engine (loading, warm-up, then the scheduler loop) runs here in the main thread: Numba's
        # OpenMP kernels launched from another thread run much slower (Engine.run).  /health is 503
        # until load_model has set the engine.  The loop ends when the app's shutdown has drained it.
        app.state.load_model()
        engine = app.state.npllm.engine
        if engine is not None:
            engine.run(until=lambda: not http.is_alive())
        http.join()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    print("npllm serve: stopped", file=sys.stderr, flush=True)
    return 0
