"""Throughput and latency of `spacy ray-serve` against a one-process baseline server, under concurrent clients.

    python benchmarks/bench_serve.py tiny --requests 2000 --clients 32
    python benchmarks/bench_serve.py sleep --sleep-ms 100 --requests 2000 --clients 32
    python benchmarks/bench_serve.py --model assets/smollm2-135m --requests 500 --clients 32
    python benchmarks/bench_serve.py training/unmasked_smollm2/model-best --requests 10000 --output serve.json
    python benchmarks/bench_serve.py training/unmasked_smollm2/model-best --pipe-only --requests 192

PIPELINE is a pipeline name or path; "tiny" builds a tiny random Llama pipeline here, and --model
builds an initialized (untrained) pipeline from configs/ner.cfg on a Hugging Face folder (the cost
per text does not depend on the weights' values). "sleep" is a stand-in that measures the serving
machinery alone: a blank pipeline whose one component sleeps --sleep-ms per ``nlp.pipe`` call
(whatever the batch size, so it flatters batching: a real model's time grows with the batch) and
uses no CPU meanwhile. Every request holds --texts-per-request
tweet-length texts. The baseline is the usual single-process pattern (e.g. FastAPI's template): a
stdlib ThreadingHTTPServer, a lock around ``nlp``, each request's texts through ``nlp.pipe`` on
their own. Both servers run in their own processes; the clients are threads of this one, with a
kept-alive connection each. A request is "lost" when no HTTP answer comes back (connection error
or timeout), "failed" when the answer is not 200, "wrong" when a 200 answer's texts are not the
texts sent. Results are printed as a table and written as JSON with --output.
"""

import argparse
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import import_file, minibatch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = (
    "the new model from Paris labels every token of a tweet about Apple Berlin Jane Smith and "
    "New York on Sunday night while Barack Obama visits Cupertino with Angela Merkel"
).split()
SUMMARY = re.compile(r"(\d+) batches of mean size ([\d.]+), max (\d+)")


def texts(n: int) -> list[str]:
    """Tweets of the project's WNUT-16 test split when converted, else varied tweet-length sentences."""
    corpus = ROOT / "corpus" / "wnut16" / "test.spacy"
    if corpus.exists():
        import spacy
        from spacy.tokens import DocBin

        tweets = [d.text for d in DocBin().from_disk(corpus).get_docs(spacy.blank("en").vocab)]
        return [tweets[i % len(tweets)] for i in range(n)]
    return [" ".join(WORDS[(i * 5) % 11 : (i * 5) % 11 + 8 + i % 17]) + "." for i in range(n)]


@Language.factory("bench_sleep", default_config={"ms": 100.0})
def make_sleep(nlp: Language, name: str, ms: float) -> "Sleep":
    return Sleep(ms)


class Sleep:
    """A stand-in for a model: sleeps ``ms`` per call and per ``pipe`` batch, whatever its size."""

    def __init__(self, ms: float) -> None:
        self.seconds = ms / 1000

    def __call__(self, doc: Doc) -> Doc:
        time.sleep(self.seconds)
        return doc

    def pipe(self, docs: Iterable[Doc], batch_size: int = 128) -> Iterator[Doc]:
        for batch in minibatch(docs, size=batch_size):
            time.sleep(self.seconds)
            yield from batch


def build_pipeline(model: str, folder: Path, *, sleep_ms: float = 100.0) -> Path:
    """An initialized ner pipeline on ``model`` ("tiny": a tiny random Llama built here)."""
    import spacy

    from tests.helpers import examples, make_nlp, save_tiny_pretrained

    if model == "sleep":
        nlp = spacy.blank("en")
        nlp.add_pipe("bench_sleep", config={"ms": sleep_ms})
        nlp.to_disk(folder / "pipeline")
        return folder / "pipeline"
    if model == "tiny":
        nlp = make_nlp(save_tiny_pretrained(folder / "tiny-llama", "llama"))
    else:
        overrides = {"paths.base_model": model, "components.transformer.model.num_layers": 20}
        config = spacy.util.load_config(ROOT / "configs" / "ner.cfg", overrides=overrides, interpolate=True)
        nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    nlp.initialize(lambda: examples(nlp))
    nlp.to_disk(folder / "pipeline")
    return folder / "pipeline"


def run_baseline_server(pipeline: str, *, port: int, threads: int, code: Path | None) -> None:
    """The baseline: one process, one ``nlp`` behind a lock, each request's texts through ``nlp.pipe`` alone
    (``POST /annotate`` with "text" or "texts", answering ``{"docs": [Doc.to_json(), ...]}``)."""
    import spacy
    import torch

    torch.set_num_threads(threads)
    if code and code.resolve() != Path(__file__).resolve():  # this file's factories are registered already
        import_file("code", code)
    nlp = spacy.load(pipeline)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Serve proxy

        def do_POST(self) -> None:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                batch = [body["text"]] if "text" in body else body["texts"]
                with lock:
                    docs = [doc.to_json() for doc in nlp.pipe(batch)]
                self.answer(200, {"docs": docs})
            except Exception as err:
                self.answer(400, {"error": f"{type(err).__name__}: {err}"})

        def answer(self, status: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # the default backlog (5) resets connections of 32 clients connecting at once

    server = Server(("127.0.0.1", port), Handler)
    print("Serving", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], *, timeout: float = 600) -> tuple[subprocess.Popen, list[str]]:
    """Start a server process and wait for its "Serving" line; returns it and its output lines so far."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    deadline = time.monotonic() + timeout
    while not any("Serving" in line for line in output):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            sys.exit(f"{' '.join(command)} did not start:\n{''.join(output)[-3000:]}")
        time.sleep(0.2)
    return process, output


def stop(process: subprocess.Popen, sig: int) -> None:
    process.send_signal(sig)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()


def fire(port: int, bodies: list[list[str]], *, clients: int, timeout: float) -> dict[str, Any]:
    """Send every body once from ``clients`` threads (one kept-alive connection each); count and time the answers."""
    lock, next_index = threading.Lock(), iter(range(len(bodies)))
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0, "lost": 0, "wrong": 0}
    errors: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            payload = json.dumps({"texts": bodies[i]}).encode()
            began = time.perf_counter()
            try:
                connection.request("POST", "/annotate", body=payload, headers={"Content-Type": "application/json"})
                answer = connection.getresponse()
                status, data = answer.status, answer.read()
            except Exception as err:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                with lock:
                    counts["lost"] += 1
                    errors.append(repr(err))
                continue
            seconds = time.perf_counter() - began
            if status != 200:
                kind = "failed"
            elif [d["text"] for d in json.loads(data)["docs"]] != bodies[i]:
                kind = "wrong"
            else:
                kind = "ok"
            with lock:
                counts[kind] += 1
                if kind == "ok":
                    latencies.append(seconds)
                elif kind == "failed":
                    errors.append(f"{status}: {data[:200]!r}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {
        "requests": len(bodies),
        **counts,
        "seconds": seconds,
        "requests_per_second": counts["ok"] / seconds,
        "texts_per_second": counts["ok"] * len(bodies[0]) / seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
        "errors": errors[:5],
    }


def batch_sizes(logs: Path) -> dict[str, float]:
    """Batches and their mean and largest size, from the replicas' summary log lines."""
    found = SUMMARY.findall("".join(p.read_text() for p in logs.glob("replica_*.log")))
    batches = sum(int(n) for n, _, _ in found)
    texts_in = sum(int(n) * float(mean) for n, mean, _ in found)
    return {
        "batches": batches,
        "mean": texts_in / batches if batches else 0.0,
        "max": max((int(m) for *_, m in found), default=0),
    }


def bench(pipeline: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Warm up then load each server in turn; returns the JSON-able results."""
    pool = texts(args.requests * args.texts_per_request)
    bodies = [pool[i * args.texts_per_request : (i + 1) * args.texts_per_request] for i in range(args.requests)]
    warmup = bodies[: args.warmup]
    results: dict[str, Any] = {
        "pipeline": pipeline,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "load_average_start": os.getloadavg()[0],
        "requests": args.requests,
        "clients": args.clients,
        "texts_per_request": args.texts_per_request,
        "mean_chars_per_text": statistics.fmean(len(t) for t in pool),
    }
    if not args.skip_baseline:
        port = free_port()
        threads = args.baseline_threads or os.cpu_count() or 1
        command = [
            sys.executable,
            __file__,
            "--baseline-server",
            pipeline,
            "--port",
            str(port),
            "--threads",
            str(threads),
        ]
        command += ["--code", str(args.code)] if args.code else []
        process, _ = start(command)
        try:
            fire(port, warmup, clients=args.clients, timeout=args.timeout)
            results["baseline"] = {
                "torch_threads": threads,
                **fire(port, bodies, clients=args.clients, timeout=args.timeout),
            }
        finally:
            stop(process, signal.SIGTERM)
    port, logs = free_port(), work / "serve-logs"
    options = {
        "replicas": args.replicas,
        "cpus_per_replica": args.cpus_per_replica,
        "max_batch_size": args.max_batch_size,
        "batch_wait_ms": args.batch_wait_ms,
    }
    command = [sys.executable, "-m", "spacy", "ray-serve", pipeline, "--port", str(port), "--log-dir", str(logs)]
    command += [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    command += ["--code", str(args.code)] if args.code else []
    command += [
        "--log-every",
        "2",
        "--num-cpus",
        str(max(os.cpu_count() or 1, int(args.replicas * args.cpus_per_replica))),
    ]
    began = time.perf_counter()
    process, _ = start(command)
    startup = time.perf_counter() - began
    try:
        fire(port, warmup, clients=args.clients, timeout=args.timeout)
        served = fire(port, bodies, clients=args.clients, timeout=args.timeout)
        time.sleep(2.5)  # one more summary line
        results["ray_serve"] = {**options, "startup_seconds": startup, **served, "batch_sizes": batch_sizes(logs)}
    finally:
        stop(process, signal.SIGINT)
    if "baseline" in results:
        results["speedup"] = results["ray_serve"]["requests_per_second"] / results["baseline"]["requests_per_second"]
    results["load_average_end"] = os.getloadavg()[0]
    return results


def pipe_speed(pipeline: str, *, threads: int, batch_size: int, n_texts: int, code: Path | None) -> dict[str, Any]:
    """texts/s of ``nlp.pipe`` alone (no server) on ``threads`` torch threads, one text per call
    (``batch_size`` 1, as the baseline server runs) or in batches; run in a process of its own."""
    import spacy
    import torch

    torch.set_num_threads(threads)
    if code:
        import_file("bench_code", code)
    nlp = spacy.load(pipeline)
    sample = texts(n_texts)
    list(nlp.pipe(sample[:32], batch_size=32))  # warm up (and merge adapters)
    start_time = time.perf_counter()
    if batch_size == 1:
        for text in sample:
            list(nlp.pipe([text]))
    else:
        list(nlp.pipe(sample, batch_size=batch_size))
    seconds = time.perf_counter() - start_time
    return {"threads": threads, "batch_size": batch_size, "texts_per_second": len(sample) / seconds}


def pipe_only(pipeline: str, args: argparse.Namespace) -> dict[str, Any]:
    """The bound a server meets: ``nlp.pipe`` texts/s one at a time and in batches of
    ``--max-batch-size``, on every core and on one, each in a fresh process."""
    rows = []
    for threads in sorted({os.cpu_count() or 1, 1}, reverse=True):
        for batch_size in (1, args.max_batch_size):
            command = [sys.executable, __file__, pipeline, "--pipe-case", f"{threads},{batch_size}"]
            command += ["--requests", str(args.requests)] + (["--code", str(args.code)] if args.code else [])
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"pipe case {threads},{batch_size} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{threads} thread(s), batch {batch_size}: {rows[-1]['texts_per_second']:.1f} texts/s", flush=True)
    return {
        "pipeline": pipeline,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "load_average_start": os.getloadavg()[0],
        "texts": args.requests,
        "pipe": rows,
    }


def report(results: dict[str, Any]) -> None:
    """A markdown table of the results."""
    print(
        f"\n{results['requests']} requests x {results['texts_per_request']} text(s) "
        f"({results['mean_chars_per_text']:.0f} chars), {results['clients']} clients, pipeline {results['pipeline']}"
    )
    print(
        f"{results['machine']}, 1-min load average {results['load_average_start']:.1f} at the start, "
        f"{results['load_average_end']:.1f} at the end\n"
    )
    print("| server | requests/s | p50 ms | p99 ms | ok | failed | lost | wrong |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, label in (("baseline", "baseline (1 process, lock, nlp.pipe per request)"), ("ray_serve", "ray-serve")):
        if key in results:
            r = results[key]
            if key == "ray_serve":
                b = r["batch_sizes"]
                label = (
                    f"ray-serve ({r['replicas']} replica(s) x {r['cpus_per_replica']} CPU, batches of mean "
                    f"{b['mean']:.1f}, max {b['max']})"
                )
            print(
                f"| {label} | {r['requests_per_second']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['ok']} "
                f"| {r['failed']} | {r['lost']} | {r['wrong']} |"
            )
    if "speedup" in results:
        print(f"\nray-serve / baseline throughput: {results['speedup']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", nargs="?", default="tiny", help='a pipeline name or path, "tiny" or "sleep"')
    parser.add_argument("--model", help="a Hugging Face folder to build an initialized pipeline on (not PIPELINE)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=64, help="requests sent to each server before timing")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--cpus-per-replica", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--baseline-threads", type=int, help="torch threads of the baseline (default: every core)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--code", type=Path, help="a Python file of registered functions the pipeline needs")
    parser.add_argument("--sleep-ms", type=float, default=100.0, help='the "sleep" pipeline\'s time per nlp.pipe call')
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a request counts as lost")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--pipe-only",
        action="store_true",
        help="no servers: nlp.pipe texts/s one text per call and in batches of --max-batch-size (--requests texts)",
    )
    parser.add_argument("--pipe-case", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-server", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        run_baseline_server(args.baseline_server, port=args.port, threads=args.threads, code=args.code)
        return
    if args.pipe_case:
        threads, batch_size = map(int, args.pipe_case.split(","))
        speed = pipe_speed(args.pipeline, threads=threads, batch_size=batch_size, n_texts=args.requests, code=args.code)
        print(json.dumps(speed))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.model or args.pipeline in ("tiny", "sleep"):
        pipeline = str(build_pipeline(args.model or args.pipeline, work, sleep_ms=args.sleep_ms))
    else:
        pipeline = args.pipeline
    if args.pipeline == "sleep" and not args.model:
        args.code = Path(__file__).resolve()  # the replicas need the bench_sleep factory
    if args.pipe_only:
        results = pipe_only(pipeline, args)
        if args.output:
            args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf8")
        return
    results = bench(pipeline, args, work)
    if args.model:
        results["pipeline"] = f"{args.model} (initialized from configs/ner.cfg, 20 blocks)"
    elif args.pipeline == "sleep":
        results["pipeline"] = f"sleep (a stand-in sleeping {args.sleep_ms:g} ms per nlp.pipe call)"
    report(results)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf8")
        print(f"\nResults written to {args.output}")


if __name__ == "__main__":
    main()
