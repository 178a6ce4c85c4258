"""Lesson 09 (serving): ``npllm serve`` beside llama.cpp's ``llama-server`` on the same GGUF.

Both servers get the same model file, threads, parallel slots and context, and both run side by
side for the whole benchmark (an idle server costs nothing).  For 1, 4 and 8 concurrent clients,
each client sends ``--requests`` streamed greedy completions one after another (``ignore_eos``,
so every request decodes exactly ``--max-tokens`` tokens; each prompt is different and
llama-server's prompt cache is turned off per request, so both prefill every prompt).  The
levels run in ``--rounds`` rounds; within a round each level runs on one engine and then the
other, the order alternating round by round, so a slow spell of a shared machine hits both.
Reported per engine and concurrency, as medians over the rounds:

    aggregate tok/s   all completion tokens / wall time of the level
    TTFT p50          request sent -> first streamed token
    latency p50/p99   request sent -> [DONE]

and the ratios npllm / llama-server of those medians.  The clients are plain sockets that read
the SSE stream and parse only the chunks they need (the first text, the usage), so the client
threads take little of the two cores the servers share with them.  Results go to
``benchmarks/results/serve.json``.

    python benchmarks/bench_serve.py --llama-server /path/to/llama-server
    python benchmarks/bench_serve.py --engines npllm --clients 1 2 --max-tokens 8 --requests 1 --rounds 1   # smoke
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# where benchmarks/build_llama_cpp.sh builds it
DEFAULT_LLAMA_SERVER = os.path.join(os.environ.get("NPLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "npllm"),
                                    "llama.cpp-" + os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36"),
                                    "build", "bin", "llama-server")
TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a city at night", "a forest", "the moon",
          "a library", "a train", "a garden", "a mountain", "a clock"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine, args, model_path, port, log):
    if engine == "npllm":
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "npllm", "serve", "-m", model_path, "--port", str(port),
               "-np", str(args.parallel), "-c", str(args.ctx_size), "-t", str(args.threads)]
    else:
        env = dict(os.environ)
        cmd = [args.llama_server, "-m", model_path, "--host", "127.0.0.1", "--port", str(port),
               "-np", str(args.parallel), "-c", str(args.ctx_size), "-t", str(args.threads),
               "-tb", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{engine} exited with status {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"{engine} did not become healthy in 300 s")
        time.sleep(0.25)


def _body_lines(f):
    """The lines of an HTTP response body (after the status line), chunked or not."""
    chunked = False
    for line in f:
        if line in (b"\r\n", b"\n"):
            break
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    if not chunked:
        yield from f
        return
    pending = b""
    while True:
        size = int(f.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        pending += f.read(size)
        f.readline()  # the CRLF after the chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def one_request(base, prompt, max_tokens):
    """Stream one completion; returns (ttft s, latency s, completion tokens).  A raw HTTP/1.1
    request on a socket: per streamed line only a prefix test, JSON only for the first text
    chunk and the usage chunk."""
    host, port = base.rsplit("//", 1)[1].split(":")
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True, "cache_prompt": False,
                       "stream_options": {"include_usage": True}}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    t0 = time.perf_counter()
    ttft, chunks, usage = None, 0, None
    with socket.create_connection((host, int(port)), timeout=600) as sock:
        sock.sendall(head + body)
        f = sock.makefile("rb")
        status = f.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"HTTP status {status.decode(errors='replace').strip()}")
        for line in _body_lines(f):
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            if b'"usage"' in data and b'"completion_tokens"' in data:
                u = json.loads(data).get("usage")
                if u:
                    usage = u.get("completion_tokens")
                    continue
            chunks += 1
            if ttft is None and json.loads(data)["choices"][0].get("text"):
                ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0, usage if usage is not None else chunks


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def run_level(base, clients, requests, max_tokens):
    results, errors = [], []

    def client(k):
        for j in range(requests):
            topic = TOPICS[(k * requests + j) % len(TOPICS)]
            try:
                results.append(one_request(base, f"Client {k}, request {j}: write a long story about {topic}.",
                                           max_tokens))
            except Exception as e:  # reported in the JSON
                errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = [r[0] for r in results if r[0] is not None]
    lat = [r[1] for r in results]
    tokens = sum(r[2] for r in results)
    return {"clients": clients, "requests": len(results), "errors": errors, "wall_s": round(wall, 3),
            "completion_tokens": tokens, "aggregate_tok_s": round(tokens / wall, 2),
            "ttft_p50_s": round(statistics.median(ttfts), 4) if ttfts else None,
            "latency_p50_s": round(percentile(lat, 50), 3) if lat else None,
            "latency_p99_s": round(percentile(lat, 99), 3) if lat else None}


def median_level(levels):
    """One level's rounds -> the medians of each figure, and every round's tok/s."""
    def med(key):
        xs = [lv[key] for lv in levels if lv[key] is not None]
        return round(statistics.median(xs), 4) if xs else None

    return {"clients": levels[0]["clients"], "rounds": len(levels),
            "requests": sum(lv["requests"] for lv in levels), "errors": sum((lv["errors"] for lv in levels), []),
            "completion_tokens": sum(lv["completion_tokens"] for lv in levels),
            "aggregate_tok_s": med("aggregate_tok_s"), "ttft_p50_s": med("ttft_p50_s"),
            "latency_p50_s": med("latency_p50_s"), "latency_p99_s": med("latency_p99_s"),
            "aggregate_tok_s_rounds": [lv["aggregate_tok_s"] for lv in levels]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias or .gguf path (both engines)")
    p.add_argument("--llama-server", default=DEFAULT_LLAMA_SERVER)
    p.add_argument("--engines", default="npllm,llama-server")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=8, help="slots (-np) of both servers")
    p.add_argument("--ctx-size", type=int, default=4096, help="-c of both servers (shared by the slots)")
    p.add_argument("--clients", type=int, nargs="*", default=[1, 4, 8])
    p.add_argument("--requests", type=int, default=3, help="requests per client at each level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="rounds of all levels, engines alternating")
    p.add_argument("--out", default=os.path.join(HERE, "results", "serve.json"))
    args = p.parse_args(argv)

    sys.path.insert(0, ROOT)
    from npllm.models import resolve_model

    model_path = resolve_model(args.model)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "llama-server" in engines and not os.access(args.llama_server, os.X_OK):
        sys.exit(f"bench_serve: --llama-server {args.llama_server} is not an executable; build it or pass "
                 "--engines npllm")
    out = {"model": model_path, "threads": args.threads, "parallel": args.parallel, "ctx_size": args.ctx_size,
           "max_tokens": args.max_tokens, "requests_per_client": args.requests, "rounds": args.rounds,
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "engines": {}}
    servers, logs = {}, []
    try:
        for engine in engines:
            port = free_port()
            log = open(os.path.join(tempfile.gettempdir(), f"bench_serve_{engine}.log"), "w")
            logs.append(log)
            servers[engine] = (start_server(engine, args, model_path, port, log), f"http://127.0.0.1:{port}")
            for prompt in ("Warm-up: say hello.", "Warm-up: write a long story about a lighthouse at night."):
                one_request(servers[engine][1], prompt, 4)  # load compiled code, fault in the weights: untimed
        runs = {e: {c: [] for c in args.clients} for e in engines}
        for rnd in range(args.rounds):
            for c in args.clients:
                for engine in (engines if rnd % 2 == 0 else engines[::-1]):
                    level = run_level(servers[engine][1], c, args.requests, args.max_tokens)
                    runs[engine][c].append(level)
                    print(f"round {rnd + 1} {engine:13s} {c} client(s): {level['aggregate_tok_s']:7.1f} tok/s  "
                          f"TTFT p50 {level['ttft_p50_s']} s  latency p50 {level['latency_p50_s']} s "
                          f"p99 {level['latency_p99_s']} s", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
    for engine in engines:
        out["engines"][engine] = [median_level(runs[engine][c]) for c in args.clients]
        for level in out["engines"][engine]:
            print(f"{engine:13s} {level['clients']} client(s), medians: {level['aggregate_tok_s']:7.1f} tok/s  "
                  f"TTFT p50 {level['ttft_p50_s']} s  latency p50 {level['latency_p50_s']} s "
                  f"p99 {level['latency_p99_s']} s")
    if "npllm" in out["engines"] and "llama-server" in out["engines"]:
        ratios = []
        for a, b in zip(out["engines"]["npllm"], out["engines"]["llama-server"]):
            ratios.append({"clients": a["clients"],
                           "tok_s_npllm_over_llama": round(a["aggregate_tok_s"] / b["aggregate_tok_s"], 3),
                           "ttft_npllm_over_llama": round(a["ttft_p50_s"] / b["ttft_p50_s"], 3)
                           if a["ttft_p50_s"] and b["ttft_p50_s"] else None})
        out["ratios"] = ratios
        for r in ratios:
            print(f"{r['clients']} client(s): npllm/llama-server tok/s x{r['tok_s_npllm_over_llama']}, "
                  f"TTFT x{r['ttft_npllm_over_llama']}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
