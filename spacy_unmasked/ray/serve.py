"""`python -m spacy ray-serve PIPELINE`: a trained pipeline behind an HTTP endpoint on Ray Serve.

Each replica (a Ray actor) loads the pipeline once. An HTTP request is validated in full
first, then each of its texts is submitted on its own to a method wrapped by Serve's
``@serve.batch``, so one ``nlp.pipe`` batch mixes the texts of concurrent requests; the
answers are put back in request order. Endpoints: ``POST /annotate``, ``GET /health``,
``GET /meta``. Every replica logs, every ``--log-every`` seconds, its requests/s, texts/s
and batch sizes (Python logging, into Serve's replica log files).

Registered as a spaCy CLI command through the ``spacy_cli`` entry-point group; Ray is
imported only when a server starts, never when this module is imported.
"""

import asyncio
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

from typer import Argument as Arg
from typer import Option as Opt
from wasabi import msg

from ..errors import PipelineLoadError
from .apply import start_ray
from .spacy_cli import app, import_code

ERROR_MARK = "ray-serve: "
LOGGER = "ray.serve.spacy_unmasked"  # a child of Serve's logger: its lines land in the replica log files
ENDPOINTS = "POST /annotate, GET /health, GET /meta"
TEXT_KEYS = {"text", "id"}
TEXTS_KEYS = {"texts", "ids"}


class RequestError(Exception):
    """A request the server refuses: an HTTP status (4xx) and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_body_bytes: int = 1_000_000
    max_texts: int = 256


@dataclass
class Annotate:
    """A valid ``POST /annotate`` body: the texts in order and their ids (None when not given)."""

    texts: list[str]
    ids: list[Any] | None


def _type_name(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object"})
    return names.get(type(value), type(value).__name__)


def _check_id(value: Any, where: str) -> None:
    """Ids are JSON strings or integers (they are echoed back as given)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RequestError(400, f"{where} must be a string or an integer, not {_type_name(value)}")


def parse_annotate(body: bytes, *, limits: Limits) -> Annotate:
    """Validate a ``POST /annotate`` body, ``{"text": "..", "id": ..}`` or ``{"texts": [..], "ids": [..]}``
    (ids optional), before any text is annotated; raises RequestError (400 or 413)."""
    example = 'send {"text": "..."} or {"texts": ["...", "..."]}'
    if not body.strip():
        raise RequestError(400, f"the body is empty: {example}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON ({err}): {example}") from err
    if not isinstance(data, dict):
        raise RequestError(400, f"the body must be a JSON object, not {_type_name(data)}: {example}")
    if "text" in data and "texts" in data:
        raise RequestError(400, 'the body has both "text" and "texts": send one text as "text" or a list as "texts"')
    if "text" not in data and "texts" not in data:
        keys = ", ".join(repr(k) for k in data) or "none"
        raise RequestError(400, f'the body has no "text" or "texts" key (keys: {keys}): {example}')
    allowed = TEXT_KEYS if "text" in data else TEXTS_KEYS
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RequestError(
            400, f"unknown key(s) {', '.join(map(repr, unknown))}: with {' and '.join(map(repr, sorted(allowed)))} only"
        )
    if "text" in data:
        if not isinstance(data["text"], str):
            raise RequestError(400, f'"text" must be a string, not {_type_name(data["text"])}')
        if "id" in data:
            _check_id(data["id"], '"id"')
        return Annotate(texts=[data["text"]], ids=[data["id"]] if "id" in data else None)
    texts = data["texts"]
    if not isinstance(texts, list):
        raise RequestError(400, f'"texts" must be a list of strings, not {_type_name(texts)}')
    if len(texts) > limits.max_texts:
        raise RequestError(
            413,
            f"too many texts: {len(texts)} in one request, at most {limits.max_texts} "
            "(the server's --max-texts): split the request",
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(400, f'"texts"[{i}] must be a string, not {_type_name(text)}')
    ids = data.get("ids")
    if ids is not None:
        if not isinstance(ids, list) or len(ids) != len(texts):
            got = f"has {len(ids)}" if isinstance(ids, list) else f"is {_type_name(ids)}"
            raise RequestError(400, f'"ids" must be a list of one id per text: {len(texts)} texts, but "ids" {got}')
        for i, value in enumerate(ids):
            _check_id(value, f'"ids"[{i}]')
    return Annotate(texts=texts, ids=ids)


async def read_body(request: Any, *, max_bytes: int) -> bytes:
    """The request body, refused (413) past ``max_bytes`` by its Content-Length or while it streams in."""
    too_big = f"the body is over the size limit of {max_bytes} bytes (the server's --max-body-bytes)"
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise RequestError(413, f"{too_big}: {length} bytes; send fewer or shorter texts per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"{too_big}; send fewer or shorter texts per request")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Stats:
    """Requests, texts and batch sizes of one replica since its last summary line."""

    requests: int = 0
    refused: int = 0
    texts: int = 0
    batches: list[int] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)

    def summary(self) -> str | None:
        """One log line of the period (None when nothing was served), and start a new period."""
        now = time.monotonic()
        seconds, batches = max(now - self.since, 1e-9), self.batches
        line = None
        if self.requests or self.refused or batches:
            mean = sum(batches) / len(batches) if batches else 0.0
            line = (
                f"{self.requests / seconds:.1f} requests/s, {self.texts / seconds:.1f} texts/s over {seconds:.1f} s: "
                f"{self.requests} requests annotated, {self.refused} refused, "
                f"{len(batches)} batches of mean size {mean:.1f}, max {max(batches, default=0)}"
            )
        self.requests, self.refused, self.texts, self.batches, self.since = 0, 0, 0, [], now
        return line


class Failure:
    """A text the pipeline failed on (returned by the batch in its place, so the others still answer)."""

    def __init__(self, error: Exception) -> None:
        self.message = f"{type(error).__name__}: {error}"


class PipelineServer:
    """A Serve replica: loads the pipeline once, validates requests and sends their texts one by one
    into Serve's batching, which groups the texts of concurrent requests into ``nlp.pipe`` batches."""

    def __init__(
        self,
        *,
        model: str,
        use_gpu: bool = False,
        torch_threads: int | None = None,
        max_batch_size: int = 32,
        batch_wait_s: float = 0.01,
        limits: Limits | None = None,
        log_every_s: float = 10.0,
        code_path: str | None = None,
    ) -> None:
        import spacy
        from ray import serve

        self.logger = logging.getLogger(LOGGER)
        self.limits = limits or Limits()
        self.nlp = None
        try:
            if code_path:
                import_code(Path(code_path))
            if use_gpu:
                spacy.require_gpu()
            elif torch_threads:
                import torch

                torch.set_num_threads(torch_threads)
            self.nlp = spacy.load(model)
        except (Exception, SystemExit) as err:  # spaCy's import_code exits on a bad --code file
            reason = f"{type(err).__name__}: {err}"
            if isinstance(err, SystemExit):
                reason = f"the --code file {code_path} cannot be imported there"
            raise PipelineLoadError(
                f"{ERROR_MARK}the pipeline {model!r} failed to load on a Ray Serve replica: {reason}"
            ) from err
        self.name = f"{self.nlp.meta.get('lang')}_{self.nlp.meta.get('name')}"
        self.replica = serve.get_replica_context().replica_tag
        self.stats = Stats()
        self.log_every_s = log_every_s
        self._logging_task: asyncio.Task | None = None
        self.annotate_text = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)(
            self._annotate_batch
        )
        self.logger.info(f"replica {self.replica} loaded {self.name} ({', '.join(self.nlp.pipe_names)})")

    def check_health(self) -> None:
        """Serve's periodic health check: the replica is healthy once its pipeline has loaded."""
        if self.nlp is None:
            raise RuntimeError("the pipeline is not loaded")

    async def __call__(self, request: Any) -> Any:
        """Route an HTTP request; refused requests get their 4xx and a JSON ``{"error": message}``."""
        from starlette.responses import JSONResponse

        self._start_logging()
        path = request.url.path.rstrip("/") or "/"
        routes = {"/annotate": ("POST", self.annotate), "/health": ("GET", self.health), "/meta": ("GET", self.meta)}
        try:
            if path not in routes:
                raise RequestError(404, f"no endpoint {path}: this server has {ENDPOINTS}")
            method, handler = routes[path]
            if request.method != method:
                raise RequestError(405, f"{path} takes {method}, not {request.method}")
            return JSONResponse(await handler(request))
        except RequestError as err:
            self.stats.refused += err.status < 500
            return JSONResponse({"error": err.message}, status_code=err.status)

    async def annotate(self, request: Any) -> dict[str, Any]:
        """``POST /annotate``: ``{"docs": [Doc.to_json(), ...]}`` in request order, each with its ``"id"``
        when ids were sent. The whole body is validated before any text is batched."""
        body = parse_annotate(await read_body(request, max_bytes=self.limits.max_body_bytes), limits=self.limits)
        self.stats.requests += 1
        self.stats.texts += len(body.texts)
        docs = await asyncio.gather(*(self.annotate_text(text) for text in body.texts))
        failed = [(i, doc) for i, doc in enumerate(docs) if isinstance(doc, Failure)]
        if failed:
            i, failure = failed[0]
            raise RequestError(500, f"the pipeline failed on text {i} of the request: {failure.message}")
        if body.ids is not None:
            docs = [{**doc, "id": doc_id} for doc, doc_id in zip(docs, body.ids, strict=True)]
        return {"docs": docs}

    async def health(self, request: Any) -> dict[str, Any]:
        """``GET /health``: answered by a replica only, so only once its pipeline has loaded."""
        return {"status": "ready", "pipeline": self.name, "replica": self.replica}

    async def meta(self, request: Any) -> dict[str, Any]:
        """``GET /meta``: the pipeline's ``nlp.meta`` (with its ``unmasked`` key)."""
        return self.nlp.meta

    async def _annotate_batch(self, texts: list[str]) -> list[dict[str, Any] | Failure]:
        """The batched method: one ``nlp.pipe`` over texts of concurrent requests. It runs on the replica's
        event loop on purpose: Serve forms the next batch as soon as a text waits, so with the pipeline
        in a worker thread the loop would cut the waiting texts into many small batches; blocked, it
        collects every text that arrived meanwhile (up to --max-batch-size) into the next batch."""
        self.stats.batches.append(len(texts))
        self.logger.debug(f"batch of {len(texts)} texts")
        return self._run_pipeline(texts)

    def _run_pipeline(self, texts: list[str]) -> list[dict[str, Any] | Failure]:
        """``Doc.to_json()`` of each text; when the batch fails, each text alone, so a failing text
        fails its own request only."""
        try:
            return [doc.to_json() for doc in self.nlp.pipe(texts, batch_size=len(texts))]
        except Exception as err:
            if len(texts) == 1:
                self.logger.exception("the pipeline failed on a text")
                return [Failure(err)]
            return [result for text in texts for result in self._run_pipeline([text])]

    def _start_logging(self) -> None:
        """Start the replica's periodic summary (on the replica's event loop, at its first request)."""
        if self._logging_task is None and self.log_every_s > 0:
            self._logging_task = asyncio.get_running_loop().create_task(self._log_periodically())

    async def _log_periodically(self) -> None:
        """Log requests/s, texts/s and batch sizes every ``log_every_s`` seconds with traffic."""
        while True:
            await asyncio.sleep(self.log_every_s)
            line = self.stats.summary()
            if line:
                self.logger.info(line)


@dataclass(frozen=True)
class ServeOptions:
    """How the pipeline is deployed: replicas, their resources, batching and request limits."""

    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_batch_size: int = 32
    batch_wait_ms: float = 10.0
    max_ongoing_requests: int | None = None
    limits: Limits = field(default_factory=Limits)
    log_every_s: float = 10.0
    log_dir: Path | None = None
    code_path: Path | None = None
    load_attempts: int = 3  # start-up failures of a replica before the deploy fails (Serve's constructor retries)

    def check(self) -> None:
        """Raise ValueError naming the first option out of range."""
        ongoing = self.max_ongoing_requests
        checks = [
            (self.replicas >= 1, "--replicas must be at least 1"),
            (self.load_attempts >= 1, "load_attempts must be at least 1"),
            (self.cpus_per_replica >= 0 and self.gpus_per_replica >= 0, "--cpus/--gpus-per-replica must be >= 0"),
            (self.max_batch_size >= 1, "--max-batch-size must be at least 1"),
            (self.batch_wait_ms >= 0, "--batch-wait-ms must be >= 0"),
            (ongoing is None or ongoing >= 1, "--max-ongoing-requests must be at least 1"),
            (min(self.limits.max_body_bytes, self.limits.max_texts) >= 1, "--max-body-bytes/--max-texts must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def ongoing(self) -> int:
        """Requests a replica takes at once: by default two batches' worth, so one fills while one runs."""
        return self.max_ongoing_requests or 2 * self.max_batch_size


def build_app(model: str, options: ServeOptions) -> Any:
    """The Serve application: the ``PipelineServer`` deployment with its replicas, resources and batching."""
    from ray import serve

    options.check()
    actor_options: dict[str, Any] = {"num_cpus": options.cpus_per_replica}
    if options.gpus_per_replica:
        actor_options["num_gpus"] = options.gpus_per_replica
    logging_config = {"log_level": "INFO", "enable_access_log": False}
    if options.log_dir:
        logging_config["logs_dir"] = str(options.log_dir)
    deployment = serve.deployment(
        PipelineServer,
        name="SpacyPipeline",
        num_replicas=options.replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=options.ongoing,
        max_constructor_retry_count=options.load_attempts,
        logging_config=logging_config,
    )
    return deployment.bind(
        model=model,
        use_gpu=options.gpus_per_replica > 0,
        torch_threads=max(1, math.floor(options.cpus_per_replica)),
        max_batch_size=options.max_batch_size,
        batch_wait_s=options.batch_wait_ms / 1000,
        limits=options.limits,
        log_every_s=options.log_every_s,
        code_path=str(options.code_path) if options.code_path else None,
    )


@dataclass
class Server:
    """A running server: where it listens and what to stop (Serve and Ray only if this process started them)."""

    url: str
    name: str
    started_serve: bool
    started_ray: bool

    def stop(self) -> None:
        """Delete the application, then shut down Serve and Ray if this process started them:
        the replicas finish their requests (Serve's graceful shutdown) and the port closes."""
        import ray
        from ray import serve

        if self.started_serve:
            serve.shutdown()
        else:
            serve.delete(self.name)
        if self.started_ray:
            ray.shutdown()


def _check_local_pipeline(model: str) -> None:
    """Fail early when MODEL is neither an installed package nor a path here (a local Ray only)."""
    import spacy

    if not spacy.util.is_package(model) and not Path(model).exists():
        raise PipelineLoadError(f"cannot find the pipeline {model!r}: it is neither an installed package nor a path")


def serve_pipeline(
    model: str,
    options: ServeOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    num_cpus: int | None = None,
    name: str = "spacy",
) -> Server:
    """Start Ray (local, or connect to ``address``), start Serve on HOST:PORT and deploy the pipeline;
    returns once every replica has loaded it. A load failure raises PipelineLoadError."""
    options.check()
    if address is None:
        _check_local_pipeline(model)
        if options.code_path and not options.code_path.exists():
            raise PipelineLoadError(f"cannot find the --code file {options.code_path}")
    if num_cpus is None:
        num_cpus = max(1, math.ceil(options.replicas * options.cpus_per_replica))
    started_ray = start_ray(address=address, num_cpus=num_cpus)
    from ray import serve

    started_serve = not serve.status().proxies
    server = Server(url=f"http://{host}:{port}", name=name, started_serve=started_serve, started_ray=started_ray)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(model, options), name=name, route_prefix="/")
    except Exception as err:
        details = f"{err}\n{_deployment_messages(name)}"
        server.stop()
        marked = [line for line in details.splitlines() if ERROR_MARK in line]
        if marked:
            raise PipelineLoadError(marked[-1].split(ERROR_MARK, 1)[1].strip()) from err
        raise
    return server


def _deployment_messages(name: str) -> str:
    """The status messages of the application's deployments (where Serve puts a replica's start-up error)."""
    from ray import serve

    try:
        application = serve.status().applications.get(name)
    except Exception:
        return ""
    if application is None:
        return ""
    return "\n".join([application.message, *(d.message for d in application.deployments.values())])


def _serve_logs_dir(options: ServeOptions) -> str:
    """Where the replicas write their logs, for the start-up message."""
    if options.log_dir:
        return str(options.log_dir)
    try:
        import ray

        return str(Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve")
    except Exception:
        return "the Ray session's logs/serve folder"


def wait_for_signal() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    while not stop.wait(0.5):
        pass


@app.command("ray-serve")
def ray_serve_cli(
    model: Annotated[str, Arg(help="Pipeline name (an installed package) or path; it must load on every Ray node")],
    host: Annotated[str, Opt(help="Address to listen on (0.0.0.0 for every interface)")] = "127.0.0.1",
    port: Annotated[int, Opt(help="HTTP port")] = 8000,
    address: Annotated[str | None, Opt(help="A running Ray cluster (auto, HOST:6379); default: a local Ray")] = None,
    replicas: Annotated[int, Opt("--replicas", "-r", help="Replicas, each with its own copy of the pipeline")] = 1,
    cpus_per_replica: Annotated[float, Opt(help="CPUs reserved per replica (torch threads follow it)")] = 1.0,
    gpus_per_replica: Annotated[float, Opt(help="GPUs per replica: 1 for one replica per GPU, 0 for CPU")] = 0.0,
    max_batch_size: Annotated[int, Opt("--max-batch-size", "-b", help="Most texts in one nlp.pipe batch")] = 32,
    batch_wait_ms: Annotated[float, Opt(help="Longest wait for a batch to fill, in milliseconds")] = 10.0,
    max_ongoing_requests: Annotated[
        int | None, Opt(help="Requests a replica takes at once (default: 2 x --max-batch-size)")
    ] = None,
    max_body_bytes: Annotated[int, Opt(help="Largest request body; a larger one gets 413")] = 1_000_000,
    max_texts: Annotated[int, Opt(help="Most texts in one request; more get 413")] = 256,
    num_cpus: Annotated[int | None, Opt(help="CPUs of a local Ray (default: what the replicas need)")] = None,
    name: Annotated[str, Opt(help="Name of the Serve application")] = "spacy",
    log_every: Annotated[float, Opt(help="Seconds between a replica's requests/s and batch-size log lines")] = 10.0,
    log_dir: Annotated[Path | None, Opt(help="Folder of the replicas' log files (default: Ray's logs/serve)")] = None,
    code_path: Annotated[
        Path | None, Opt("--code", "-c", help="Python file of registered functions, for replicas")
    ] = None,
) -> None:
    """Serve a trained pipeline over HTTP with Ray Serve (POST /annotate, GET /health, GET /meta):
    replicas load it once and group concurrent requests' texts into nlp.pipe batches."""
    options = ServeOptions(
        replicas=replicas,
        cpus_per_replica=cpus_per_replica,
        gpus_per_replica=gpus_per_replica,
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
        max_ongoing_requests=max_ongoing_requests,
        limits=Limits(max_body_bytes=max_body_bytes, max_texts=max_texts),
        log_every_s=log_every,
        log_dir=log_dir,
        code_path=code_path,
    )
    try:
        server = serve_pipeline(model, options, host=host, port=port, address=address, num_cpus=num_cpus, name=name)
    except (PipelineLoadError, ValueError, ImportError) as err:
        msg.fail(str(err), exits=1)
    msg.good(f"Serving {model} at {server.url} ({ENDPOINTS}) with {replicas} replica(s); Ctrl-C to stop")
    msg.info(f"Replica logs (requests/s, batch sizes): {_serve_logs_dir(options)}")
    try:
        wait_for_signal()
    finally:
        server.stop()
    msg.good("Stopped")
