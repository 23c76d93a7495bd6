"""`spacy ray-serve`: the answers of `nlp.pipe` over real HTTP, batched across requests, with clear 4xx errors,
replicas replaced when they die, and a graceful shutdown.

One local Ray (2 CPUs) serves the whole module; the real CLI (a subprocess connected to it with
--address) serves a tiny trained pipeline (ner + spancat). Tests run in file order: the shutdown
test stops that server, and the replica load-failure test needs Serve stopped."""

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import spacy

from spacy_unmasked.errors import PipelineLoadError
from spacy_unmasked.ray.serve import ServeOptions, serve_pipeline

from .helpers import SAMPLE_TEXTS, make_nlp, train

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

TEXTS = SAMPLE_TEXTS
MAX_BATCH, MAX_TEXTS, MAX_BYTES = 8, 20, 20_000
MARKER = "[fail here]"
CODE = f"""
from spacy.language import Language


@Language.component("fail_on_marker")
def fail_on_marker(doc):
    if {MARKER!r} in doc.text:
        raise ValueError("the test marker is in the text")
    return doc
"""
SUMMARY = re.compile(r"([\d.]+) requests/s, [\d.]+ texts/s .*: (\d+) requests annotated, .* max (\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Running:
    """The CLI's process, its URL, its replicas' log folder and its output lines so far."""

    process: subprocess.Popen
    url: str
    port: int
    logs: Path
    output: list[str]


@pytest.fixture(scope="module")
def cluster():
    """A quiet local Ray with 2 CPUs for the module; yields its address."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def code(tmp_path_factory) -> Path:
    """A --code file: a component that fails on texts holding MARKER (registered here too)."""
    path = tmp_path_factory.mktemp("code") / "fail_on_marker.py"
    path.write_text(CODE, encoding="utf8")
    spacy.util.import_file("fail_on_marker", path)
    return path


@pytest.fixture(scope="module")
def pipeline(tiny_llama_dir, code, tmp_path_factory) -> Path:
    nlp = make_nlp(tiny_llama_dir, components=("ner", "spancat"))
    train(nlp, steps=60, lr=5e-3)
    nlp.add_pipe("fail_on_marker")
    path = tmp_path_factory.mktemp("pipeline") / "nlp"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def nlp(pipeline):
    """The same pipeline in this process (one torch thread, as the replica with 1 CPU)."""
    return spacy.load(pipeline)


def expected(nlp, texts: list[str]) -> list[dict[str, Any]]:
    return [doc.to_json() for doc in nlp.pipe(texts)]


@pytest.fixture(scope="module")
def server(cluster, pipeline, code, tmp_path_factory):
    """`python -m spacy ray-serve` on the module's Ray, until its "Serving" line (or its exit)."""
    port, logs = free_port(), tmp_path_factory.mktemp("serve-logs")
    command = [sys.executable, "-m", "spacy", "ray-serve", str(pipeline), "--address", cluster, "--port", str(port)]
    command += ["--max-batch-size", str(MAX_BATCH), "--batch-wait-ms", "50", "--max-texts", str(MAX_TEXTS)]
    command += ["--max-body-bytes", str(MAX_BYTES), "--log-every", "1", "--log-dir", str(logs), "--code", str(code)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while not any("Serving" in line for line in output):
        assert process.poll() is None, "ray-serve exited:\n" + "".join(output)[-3000:]
        assert time.monotonic() < deadline, "ray-serve did not start:\n" + "".join(output)[-3000:]
        time.sleep(0.2)
    yield Running(process, f"http://127.0.0.1:{port}", port, logs, output)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def call(url: str, path: str, body: Any = None, *, raw: bytes | None = None, timeout: float = 60) -> tuple[int, Any]:
    """Status and decoded JSON answer of GET (no body) or POST (a JSON body, or raw bytes)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        try:
            return err.code, json.loads(text)
        except json.JSONDecodeError:
            return err.code, text


def test_answers_equal_nlp_pipe_in_order_with_ids(server, nlp):
    want = expected(nlp, TEXTS)
    assert sum(len(d["ents"]) for d in want) > 0 and sum(len(d["spans"]["sc"]) for d in want) > 0
    ids = ["a", 2, "c", 4, "e"]
    status, answer = call(server.url, "/annotate", {"texts": TEXTS, "ids": ids})
    assert status == 200
    assert answer["docs"] == [{**doc, "id": i} for doc, i in zip(want, ids)]
    status, answer = call(server.url, "/annotate", {"texts": TEXTS[::-1]})
    assert (status, answer) == (200, {"docs": want[::-1]})  # no "id" key when none was sent
    status, answer = call(server.url, "/annotate", {"text": TEXTS[1], "id": "one"})
    assert (status, answer) == (200, {"docs": [{**want[1], "id": "one"}]})
    # more texts than one batch holds: split over batches, put back in order
    many = [f"{TEXTS[i % 5]} ({i})" for i in range(MAX_TEXTS)]
    assert call(server.url, "/annotate", {"texts": many}) == (200, {"docs": expected(nlp, many)})


def test_concurrent_clients_get_their_own_answers(server, nlp):
    requests = [[f"{TEXTS[i % 5]} #{i}" for i in range(k, k + 1 + k % 3)] for k in range(24)]
    answers: dict[int, tuple[int, Any]] = {}
    start = threading.Barrier(12)

    def client(first: int) -> None:
        start.wait()
        for k in range(first, len(requests), 12):
            answers[k] = call(server.url, "/annotate", {"texts": requests[k], "ids": list(range(len(requests[k])))})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k, texts in enumerate(requests):
        want = [{**doc, "id": i} for i, doc in enumerate(expected(nlp, texts))]
        assert answers[k] == (200, {"docs": want}), f"request {k}"


def replica_logs(server) -> str:
    return "".join(path.read_text() for path in sorted(server.logs.glob("replica_*.log")))


def test_texts_of_concurrent_requests_share_batches_and_are_logged(server):
    """16 one-text requests at once: a batch of more than one text holds texts of several requests.
    Each replica logs requests/s and batch sizes every --log-every seconds."""
    before = len(replica_logs(server))
    start = threading.Barrier(16)
    statuses = []

    def client(i: int) -> None:
        start.wait()
        statuses.append(call(server.url, "/annotate", {"text": f"{TEXTS[i % 5]} {i}"})[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 16
    deadline, summaries = time.monotonic() + 10, []
    while time.monotonic() < deadline and sum(int(m[1]) for m in summaries) < 16:
        time.sleep(0.5)
        summaries = SUMMARY.findall(replica_logs(server)[before:])
    # >= 16: the first summary may also count texts of the previous test, logged after `before`
    assert sum(int(m[1]) for m in summaries) >= 16 and all(float(m[0]) > 0 for m in summaries), summaries
    assert 1 < max(int(m[2]) for m in summaries) <= MAX_BATCH, summaries


BAD_REQUESTS = [
    (b"Jane Smith visited Berlin.", 400, r"the body is not valid JSON \(Expecting value.*send \{\"text\""),
    (b"", 400, r"the body is empty"),
    (b"[1, 2]", 400, r"the body must be a JSON object, not a list"),
    (b'{"txt": "Berlin"}', 400, r"the body has no \"text\" or \"texts\" key \(keys: 'txt'\)"),
    (b'{"text": 42}', 400, r"\"text\" must be a string, not a number"),
    (b'{"texts": "Berlin"}', 400, r"\"texts\" must be a list of strings, not a string"),
    (b'{"texts": ["Berlin", null]}', 400, r"\"texts\"\[1\] must be a string, not null"),
    (b'{"text": "Berlin", "texts": ["Paris"]}', 400, r"both \"text\" and \"texts\""),
    (b'{"text": "Berlin", "ids": [1]}', 400, r"unknown key\(s\) 'ids': with 'id' and 'text' only"),
    (b'{"texts": ["a", "b"], "ids": [1]}', 400, r"one id per text: 2 texts, but \"ids\" has 1"),
    (b'{"texts": ["a"], "ids": [[1]]}', 400, r"\"ids\"\[0\] must be a string or an integer, not a list"),
    (json.dumps({"texts": ["a"] * (MAX_TEXTS + 1)}).encode(), 413, rf"too many texts: 21 .* at most {MAX_TEXTS}"),
    (json.dumps({"text": "a" * MAX_BYTES}).encode(), 413, rf"over the size limit of {MAX_BYTES} bytes.*: 20012 bytes"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_4xx_naming_the_problem(server, body, status, message):
    got, answer = call(server.url, "/annotate", raw=body)
    assert got == status, answer
    assert re.search(message, answer["error"]), answer["error"]


def test_a_body_streamed_past_the_limit_is_refused(server):
    """Without a Content-Length (chunked), the body is counted as it arrives."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = (b"x" * 1000 for _ in range(MAX_BYTES // 1000 + 2))
    connection.request("POST", "/annotate", body=chunks, encode_chunked=True)
    answer = connection.getresponse()
    assert answer.status == 413
    assert "over the size limit of 20000 bytes (the server's --max-body-bytes)" in json.loads(answer.read())["error"]
    connection.close()


def test_one_bad_text_fails_its_own_request_only(server, nlp):
    answers = {}
    bodies = {"bad": {"texts": [TEXTS[0], 7, TEXTS[1]]}, "good": {"texts": TEXTS[:2]}}
    threads = [
        threading.Thread(target=lambda k=k: answers.update({k: call(server.url, "/annotate", bodies[k])}))
        for k in bodies
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers["bad"] == (400, {"error": '"texts"[1] must be a string, not a number'})
    assert answers["good"] == (200, {"docs": expected(nlp, TEXTS[:2])})


def test_a_text_the_pipeline_fails_on_fails_its_own_request_only(server, nlp):
    """The batch holding it fails; its texts are then run one by one, so the other requests still get answers."""
    answers = {}
    bodies = {"bad": {"texts": [TEXTS[2], f"Berlin {MARKER}"]}, "good": {"texts": TEXTS[2:4]}}
    threads = [
        threading.Thread(target=lambda k=k: answers.update({k: call(server.url, "/annotate", bodies[k])}))
        for k in bodies
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    error = "the pipeline failed on text 1 of the request: ValueError: the test marker is in the text"
    assert answers["bad"] == (500, {"error": error})
    assert answers["good"] == (200, {"docs": expected(nlp, TEXTS[2:4])})


def test_wrong_method_or_path(server):
    assert call(server.url, "/annotate") == (405, {"error": "/annotate takes POST, not GET"})
    status, answer = call(server.url, "/ner")
    assert (
        status == 404 and answer["error"] == "no endpoint /ner: this server has POST /annotate, GET /health, GET /meta"
    )


def test_health_and_meta(server, nlp):
    status, health = call(server.url, "/health")
    assert status == 200 and health["status"] == "ready" and health["pipeline"] == "en_pipeline" and health["replica"]
    status, meta = call(server.url, "/meta")
    assert status == 200 and meta == json.loads(json.dumps(nlp.meta))
    assert meta["unmasked"]["unmask"] == "0011"


def test_a_killed_replica_is_replaced_and_no_request_is_dropped(server, nlp):
    """Clients keep sending while the replica is killed: every request gets the right answer or a 5xx
    (no dropped connection, no hang), and a new replica answers afterwards."""
    texts = TEXTS[:4] * 2
    want = {"docs": expected(nlp, texts)}
    old = call(server.url, "/health")[1]["replica"]
    results: list[tuple[float, Any]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status, answer = call(server.url, "/annotate", {"texts": texts}, timeout=120)
                results.append((time.monotonic(), "ok" if (status, answer) == (200, want) else status))
            except Exception as err:  # a dropped request
                results.append((time.monotonic(), repr(err)))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    replica = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if old in a["name"])
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
    killed = time.monotonic()
    try:
        deadline, new = killed + 120, old
        while new == old and time.monotonic() < deadline:
            time.sleep(0.5)
            status, health = call(server.url, "/health", timeout=120)
            new = health.get("replica", old) if status == 200 else old
        assert new != old, "the killed replica was not replaced"
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    outcomes = {outcome for _, outcome in results}
    assert outcomes <= {"ok", 500, 502, 503, 504}, outcomes
    assert any(t < killed and o == "ok" for t, o in results) and any(t > killed + 1 and o == "ok" for t, o in results)


def test_options_out_of_range_are_named():
    with pytest.raises(ValueError, match="--replicas must be at least 1"):
        ServeOptions(replicas=0).check()
    with pytest.raises(ValueError, match="--max-batch-size must be at least 1"):
        ServeOptions(max_batch_size=0).check()


def test_a_missing_pipeline_fails_before_ray_starts(tmp_path):
    command = [sys.executable, "-m", "spacy", "ray-serve", str(tmp_path / "nowhere"), "--port", str(free_port())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "cannot find the pipeline" in result.stdout and "neither an installed package nor a path" in result.stdout


def test_graceful_shutdown_closes_the_port(server):
    """Ctrl-C (SIGINT): the CLI deletes the application, shuts down the Serve it started, and exits 0."""
    assert call(server.url, "/health")[0] == 200
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 0, "".join(server.output)[-3000:]
    assert any("Stopped" in line for line in server.output)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    assert not serve.status().applications


def test_a_replica_load_failure_is_reported(cluster, tmp_path):
    """A folder that is no pipeline fails in the replica; its error comes back, and Serve is shut down again."""
    assert not serve.status().proxies, "Serve still runs: run this module in file order"
    with pytest.raises(PipelineLoadError, match=r"failed to load on a Ray Serve replica: OSError: \[E053\]"):
        serve_pipeline(str(tmp_path), ServeOptions(load_attempts=1), address=cluster, port=free_port())
    assert not serve.status().proxies
