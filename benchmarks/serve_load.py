"""Load and fault test of ``jaxstack serve`` (asyncio + httpx), results to JSON.

The server is ``jaxstack serve`` in its own process (as a user runs it; the clients here would otherwise
share its interpreter lock), on 127.0.0.1, over the tiny random Llama of ``tests/fixtures/evals/model``
by default, or ``--model DIR``. Two phases:

* serial: ``--requests`` non-streaming greedy completions of ``--max-tokens`` tokens, one at a time;
* concurrent: ``--clients`` clients, each sending ``--requests / --clients`` requests back to back,
  with 16 distinct (temperature, top_p) settings spread over the clients, every other client
  streaming (SSE); mixed in: malformed requests (NaN temperature, seed 2**64, bad JSON), slow clients
  (headers never finished) and streaming clients that disconnect after their first token.

Reported: aggregate completion tokens/s per phase and their ratio (streamed tokens counted exactly, from
the per-chunk ``logprobs`` tokens), latency p50/p99, time to first token (streaming), responses by status,
XLA compiles after warm-up (the engine counts them; read from ``/health``) and the server process's RSS
sampled every 0.25 s.

    .venv/bin/python benchmarks/serve_load.py                       # writes results/serve_load_cpu.json
    .venv/bin/python benchmarks/serve_load.py --requests 16 --clients 4 --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "serve_load_cpu.json"
DEFAULT_MODEL = ROOT / "tests" / "fixtures" / "evals" / "model"
SETTINGS = [(0.3 + 0.1 * i, 1.0 - 0.04 * i) for i in range(16)]  # 16 distinct (temperature, top_p)
MALFORMED = [b'{"prompt": "x", "temperature": NaN}', b'{"prompt": "x", "seed": 18446744073709551616}', b"{oops"]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _complete(client: httpx.AsyncClient, body: dict, stats: dict) -> None:
    began = time.perf_counter()
    if body.get("stream"):
        first, tokens = None, 0
        async with client.stream("POST", "/v1/completions", json=body) as response:
            stats["status"][response.status_code] += 1
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    first = first or time.perf_counter()
                    chunk = json.loads(line[len("data: "):])
                    if "error" in chunk:  # an in-band failure after the 200 status line
                        stats["status"]["stream_error"] += 1
                        break
                    logprobs = chunk["choices"][0].get("logprobs") or {}
                    tokens += len(logprobs.get("tokens", ()))  # each chunk carries its own tokens
        if first is not None:
            stats["ttft"].append(first - began)
        stats["tokens"] += tokens
    else:
        response = await client.post("/v1/completions", json=body)
        stats["status"][response.status_code] += 1
        if response.status_code == 200:
            stats["tokens"] += response.json()["usage"]["completion_tokens"]
    stats["latency"].append(time.perf_counter() - began)


async def _faults(url: str, port: int, stats: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for raw in MALFORMED:
            response = await client.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
            stats["status"][response.status_code] += 1
        slow = []
        for _ in range(20):  # slow clients: headers never finished (the server closes them)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            slow.append(writer)
        for _ in range(4):  # mid-stream disconnects
            body = {"prompt": "Once upon a time", "max_tokens": 64, "stream": True, "temperature": 1.0}
            async with client.stream("POST", "/v1/completions", json=body) as response:
                async for _line in response.aiter_lines():
                    break
            stats["disconnects"] += 1
        for writer in slow:
            writer.close()


async def _phase(url: str, port: int, *, clients: int, per_client: int, max_tokens: int, mixed: bool) -> dict:
    stats = {"status": collections.Counter(), "latency": [], "ttft": [], "tokens": 0, "disconnects": 0}

    async def client_loop(index: int) -> None:
        temperature, top_p = SETTINGS[index % len(SETTINGS)] if mixed else (0.0, 1.0)
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            for r in range(per_client):
                body = {"prompt": f"Client {index} request {r}: to keep bread fresh,", "max_tokens": max_tokens,
                        "temperature": temperature, "top_p": top_p, "seed": index * 1000 + r,
                        "stream": mixed and index % 2 == 1}
                if body["stream"]:
                    body["logprobs"] = 0
                await _complete(client, body, stats)

    began = time.perf_counter()
    tasks = [client_loop(i) for i in range(clients)]
    if mixed:
        tasks.append(_faults(url, port, stats))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    return {"clients": clients, "requests": clients * per_client, "seconds": elapsed,
            "completion_tokens": stats["tokens"], "tokens_per_s": stats["tokens"] / elapsed,
            "latency_p50_s": _percentile(stats["latency"], 0.5), "latency_p99_s": _percentile(stats["latency"], 0.99),
            "ttft_p50_s": _percentile(stats["ttft"], 0.5), "ttft_p99_s": _percentile(stats["ttft"], 0.99),
            "status": {str(k): v for k, v in sorted(stats["status"].items(), key=lambda kv: str(kv[0]))}, "disconnects": stats["disconnects"]}


async def _sample_rss(pid: int, samples: list, stop: asyncio.Event, began: float) -> None:
    while not stop.is_set():
        samples.append((round(time.perf_counter() - began, 2), round(_rss_mb(pid), 1)))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass


async def _run(url: str, port: int, pid: int, args) -> dict:
    samples: list = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(pid, samples, stop, time.perf_counter()))
    serial = await _phase(url, port, clients=1, per_client=args.requests, max_tokens=args.max_tokens, mixed=False)
    concurrent = await _phase(url, port, clients=args.clients, per_client=max(1, args.requests // args.clients),
                              max_tokens=args.max_tokens, mixed=True)
    stop.set()
    await sampler
    return {"serial": serial, "concurrent": concurrent, "rss_mb": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds for load + warm-up")
    args = parser.parse_args()

    with socket.socket() as probe:  # a free port for the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "jaxstack"), "serve", "--model", f"bench={args.model}", "--port", str(port),
               "--slots", str(args.slots)]
    load_before = os.getloadavg()
    began = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")  # the server's log (a pipe could fill and block it)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        while True:  # the server answers /health once every model is warm
            if server.poll() is not None:
                log.seek(0)
                raise SystemExit(f"jaxstack serve exited with {server.returncode}:\n{log.read()[-4000:]}")
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - began > args.startup_timeout:
                raise SystemExit(f"jaxstack serve did not come up within {args.startup_timeout} s")
            time.sleep(0.25)
        warmup = time.perf_counter() - began
        result = asyncio.run(_run(url, port, server.pid, args))
        engine = httpx.get(url + "/health", timeout=10.0).json()["models"]["bench"]
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    result.update({
        "speedup_tokens_per_s": result["concurrent"]["tokens_per_s"] / result["serial"]["tokens_per_s"],
        "compiles_after_warmup": engine["compiles_after_warmup"], "startup_with_warmup_s": warmup,
        "load_average_before": load_before,
        "engine": engine, "settings": vars(args), "server_command": " ".join(command[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_after": os.getloadavg()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    rss = [mb for _, mb in result["rss_mb"]]
    result["rss_mb_summary"] = {"first": rss[0], "max": max(rss), "last": rss[-1],
                                "median": statistics.median(rss)} if rss else None
    text = json.dumps(result, indent=2)
    print(json.dumps({k: result[k] for k in ("speedup_tokens_per_s", "compiles_after_warmup", "rss_mb_summary")}
                     | {"serial_tokens_per_s": result["serial"]["tokens_per_s"],
                        "concurrent_tokens_per_s": result["concurrent"]["tokens_per_s"],
                        "concurrent_latency_p99_s": result["concurrent"]["latency_p99_s"],
                        "status": result["concurrent"]["status"]}, indent=2))
    if not args.no_write:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
