"""`python -m spacy ray-apply PIPELINE DATA OUTPUT`: `spacy apply` on a Ray cluster.

Ray Data does the scheduling: a reading stage on the driver's node (where DATA is)
feeds an actor pool whose actors each load the pipeline once and run ``nlp.pipe``;
the driver receives the annotated documents in input order and writes them as
shards (see ``shards.py``), so a killed run resumes at the first unfinished shard.
Registered as a spaCy CLI command through the ``spacy_cli`` entry-point group;
Ray itself is imported only when the command runs (``pip install 'spacy-unmasked[ray]'``).
"""

import itertools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import srsly
from spacy.tokens import Doc, DocBin
from typer import Argument as Arg
from typer import Option as Opt
from wasabi import msg

from ..errors import AnnotationInputError, PipelineLoadError
from .shards import (
    Piece,
    ShardFolder,
    fingerprint,
    merge_shards,
    plan_shards,
    read_piece,
    remove_folder,
    shard_name,
)
from .spacy_cli import app, import_code

ERROR_MARK = "ray-apply: "
RAY_HINT = "Ray Data is not installed: pip install 'spacy-unmasked[ray]'"


@dataclass
class Summary:
    """What a run did: documents annotated now, shards written now and skipped, seconds in all
    and seconds until the first annotated documents came back (Ray and actor start-up)."""

    output: Path
    docs: int
    shards_written: int
    shards_skipped: int
    seconds: float
    errors_file: Path | None
    startup_seconds: float = 0.0

    @property
    def docs_per_second(self) -> float:
        return self.docs / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_docs_per_second(self) -> float:
        """Documents per second once the first annotated documents came back (start-up excluded)."""
        busy = self.seconds - self.startup_seconds
        return self.docs / busy if busy > 0 else 0.0


class Annotator:
    """A Ray Data actor: loads the pipeline once, annotates batches of rows with ``nlp.pipe``
    and returns, per run of rows of one shard, a serialized DocBin (as ``spacy apply`` stores it)."""

    def __init__(self, *, model: str, batch_size: int, use_gpu: bool, code_path: str | None) -> None:
        import spacy

        try:
            if code_path:
                import_code(Path(code_path))
            if use_gpu:
                spacy.require_gpu()
            self.nlp = spacy.load(model)
        except Exception as err:
            raise PipelineLoadError(
                f"{ERROR_MARK}the pipeline {model!r} failed to load on a Ray actor: {type(err).__name__}: {err}"
            ) from err
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        docs = []
        for kind, payload, user in zip(batch["kind"], batch["payload"], batch["user"], strict=True):
            if kind == "doc":
                doc = Doc(self.nlp.vocab).from_bytes(payload)
            else:
                doc = self.nlp.make_doc(payload.decode("utf8"))
            if user:
                doc.user_data.update(srsly.msgpack_loads(user))
            docs.append(doc)
        annotated = zip(batch["shard"], self.nlp.pipe(docs, batch_size=self.batch_size), strict=True)
        out: dict[str, list[Any]] = {"shard": [], "n": [], "docbin": []}
        for shard, group in itertools.groupby(annotated, key=lambda pair: int(pair[0])):
            group_docs = [doc for _, doc in group]
            out["shard"].append(shard)
            out["n"].append(len(group_docs))
            out["docbin"].append(DocBin(store_user_data=True, docs=group_docs).to_bytes())
        return out


def read_shard(row: dict[str, Any], *, text_key: str, id_key: str) -> list[dict[str, Any]]:
    """The rows of one shard (a Ray Data ``flat_map`` step on the driver's node)."""
    pieces = [Piece(**piece) for piece in json.loads(row["pieces"])]
    shard = int(row["shard"])
    return [{"shard": shard, **doc} for piece in pieces for doc in read_piece(piece, text_key=text_key, id_key=id_key)]


def start_ray(*, address: str | None, num_cpus: int | None) -> bool:
    """Connect to the cluster at ``address`` or start a quiet local Ray (no dashboard, no
    usage stats); returns whether this call started it (and so should shut it down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as err:
        raise ImportError(RAY_HINT) from err
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    return True


def ray_apply(
    model: str,
    data_path: Path,
    output: Path,
    *,
    text_key: str = "text",
    id_key: str = "id",
    address: str | None = None,
    num_actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    batch_size: int = 32,
    shard_size: int = 1000,
    num_cpus: int | None = None,
    skip_errors: bool = False,
    force: bool = False,
    code_path: Path | None = None,
    progress: bool | None = None,
) -> Summary:
    """Annotate DATA with the pipeline MODEL on Ray and write OUTPUT: one ``.spacy`` file
    when OUTPUT ends in ``.spacy``, else a folder of ``shard-NNNNNN.spacy`` files.
    ``num_cpus`` sizes a local Ray (default: what the actors need); ``progress`` None shows
    the bar on a terminal only."""
    if num_actors < 1 or batch_size < 1:
        raise AnnotationInputError("--num-actors and --batch-size must be at least 1")
    start = time.perf_counter()
    single_file = output.suffix == ".spacy"
    if single_file and output.exists():
        if not force:
            raise AnnotationInputError(f"{output} already exists: pass --force to overwrite it")
        output.unlink()
    folder = ShardFolder(output.with_name(f".{output.name}.parts") if single_file else output)
    plan = plan_shards(data_path, text_key=text_key, shard_size=shard_size)
    errors_file = write_errors(output, plan.errors)
    if plan.errors and not skip_errors:
        first = plan.errors[0]
        raise AnnotationInputError(
            f"{len(plan.errors)} input record(s) cannot be annotated, e.g. {first['file']} line {first['line']}: "
            f"{first['error']}. All are listed in {errors_file}. Fix them, or pass --skip-errors to annotate "
            "the other records and leave these out."
        )
    key = fingerprint(plan, model=model, text_key=text_key, id_key=id_key, shard_size=shard_size)
    todo = folder.open(
        key=key, counts=plan.counts, force=force, settings={"model": model, "data": str(data_path), "docs": plan.docs}
    )
    first_docs = start
    if todo:
        if num_cpus is None:
            num_cpus = max(1, math.ceil(num_actors * cpus_per_actor))
        started = start_ray(address=address, num_cpus=num_cpus)
        try:
            first_docs = _annotate(
                plan.shards,
                plan.counts,
                todo,
                folder,
                model=model,
                text_key=text_key,
                id_key=id_key,
                num_actors=num_actors,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                batch_size=batch_size,
                code_path=code_path,
                progress=progress,
            )
        finally:
            if started:
                import ray

                ray.shutdown()
    folder.finish()
    if single_file:
        merge_shards(folder, output)
        remove_folder(folder)
    return Summary(
        output=output,
        docs=sum(plan.counts[i] for i in todo),
        shards_written=len(todo),
        shards_skipped=len(plan.counts) - len(todo),
        seconds=time.perf_counter() - start,
        errors_file=errors_file if plan.errors else None,
        startup_seconds=first_docs - start,
    )


def write_errors(output: Path, errors: list[dict[str, Any]]) -> Path:
    """Write the bad records (file, line, error) beside OUTPUT, or remove a stale errors file."""
    path = output.with_name(f"{output.name}.errors.jsonl")
    if errors:
        path.parent.mkdir(parents=True, exist_ok=True)
        srsly.write_jsonl(path, errors)
    else:
        path.unlink(missing_ok=True)
    return path


def _annotate(
    shards: list[list[Piece]],
    counts: list[int],
    todo: list[int],
    folder: ShardFolder,
    *,
    model: str,
    text_key: str,
    id_key: str,
    num_actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    batch_size: int,
    code_path: Path | None,
    progress: bool | None,
) -> float:
    """Run the Ray Data pipeline over the unfinished shards and write each one as it completes;
    returns when (``time.perf_counter``) the first annotated documents arrived."""
    import ray
    import ray.data
    from tqdm import tqdm

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    rows = [{"shard": i, "pieces": json.dumps([asdict(p) for p in shards[i]])} for i in todo]
    here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}  # the inputs are on this node
    dataset = (
        ray.data.from_items(rows, override_num_blocks=len(rows))
        .flat_map(
            read_shard,
            fn_kwargs={"text_key": text_key, "id_key": id_key},
            num_cpus=0,
            concurrency=1,
            label_selector=here,
        )
        .map_batches(
            Annotator,
            fn_constructor_kwargs={
                "model": model,
                "batch_size": batch_size,
                "use_gpu": gpus_per_actor > 0,
                "code_path": str(code_path) if code_path else None,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor or None,
        )
    )
    expected = iter(todo)
    current, parts, got, first = None, [], 0, 0.0
    bar = tqdm(
        total=sum(counts[i] for i in todo),
        unit="doc",
        desc="ray-apply",
        disable=None if progress is None else not progress,
    )
    try:
        for row in dataset.iter_rows():
            shard = int(row["shard"])
            first = first or time.perf_counter()
            if current is None:
                current = next(expected)
            if shard != current:
                raise RuntimeError(f"ray-apply: documents of shard {shard} arrived before shard {current} was complete")
            parts.append(row["docbin"])
            got += int(row["n"])
            bar.update(int(row["n"]))
            if got == counts[current]:
                folder.write(current, parts)
                current, parts, got = None, [], 0
    except Exception as err:
        marked = [line for line in str(err).splitlines() if ERROR_MARK in line]
        if marked:
            raise PipelineLoadError(marked[-1].split(ERROR_MARK, 1)[1].strip()) from err
        raise
    finally:
        bar.close()
    missing = [i for i in todo if not (folder.path / shard_name(i)).exists()]
    if missing:
        raise RuntimeError(f"ray-apply: Ray Data returned no documents for shard(s) {missing[:5]}; run again to resume")
    return first


@app.command("ray-apply")
def ray_apply_cli(
    model: Annotated[str, Arg(help="Pipeline name (an installed package) or path; it must load on every Ray node")],
    data_path: Annotated[Path, Arg(help="A .spacy, .jsonl or text file, or a folder of them (as `spacy apply`)")],
    output: Annotated[Path, Arg(help="OUTPUT.spacy for one DocBin, or a folder for shard-NNNNNN.spacy files")],
    text_key: Annotated[str, Opt("--text-key", "-tk", help="Key of the text in .jsonl records")] = "text",
    id_key: Annotated[str, Opt(help="Key of a .jsonl record copied to doc.user_data['id'] when present")] = "id",
    address: Annotated[str | None, Opt(help="A running Ray cluster (auto, HOST:6379); default: a local Ray")] = None,
    num_actors: Annotated[int, Opt("--num-actors", "-n", help="Actors, each with its own copy of the pipeline")] = 1,
    cpus_per_actor: Annotated[float, Opt(help="CPUs reserved per actor (torch threads follow it)")] = 1.0,
    gpus_per_actor: Annotated[float, Opt(help="GPUs per actor: 1 for one actor per GPU, 0 for CPU")] = 0.0,
    batch_size: Annotated[int, Opt("--batch-size", "-b", help="Docs per actor call and nlp.pipe batch")] = 32,
    shard_size: Annotated[int, Opt(help="Documents per output shard (the unit of resuming)")] = 1000,
    num_cpus: Annotated[int | None, Opt(help="CPUs of a local Ray (default: what the actors need)")] = None,
    skip_errors: Annotated[bool, Opt(help="Leave out bad records (listed in OUTPUT.errors.jsonl), not fail")] = False,
    force: Annotated[bool, Opt("--force", "-F", help="Overwrite OUTPUT instead of resuming it")] = False,
    code_path: Annotated[
        Path | None, Opt("--code", "-c", help="Python file of registered functions, for actors")
    ] = None,
) -> None:
    """Apply a trained pipeline to documents with a pool of Ray actors (`spacy apply`
    past one process): resumable, in input order, local or on a Ray cluster."""
    try:
        summary = ray_apply(
            model,
            data_path,
            output,
            text_key=text_key,
            id_key=id_key,
            address=address,
            num_actors=num_actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            batch_size=batch_size,
            shard_size=shard_size,
            num_cpus=num_cpus,
            skip_errors=skip_errors,
            force=force,
            code_path=code_path,
        )
    except (AnnotationInputError, PipelineLoadError, ImportError) as err:
        msg.fail(str(err), exits=1)
    if summary.errors_file:
        msg.warn(f"Left out the bad records listed in {summary.errors_file}")
    msg.good(
        f"{summary.docs} docs in {summary.seconds:.1f} s ({summary.docs_per_second:.1f} docs/s; "
        f"{summary.steady_docs_per_second:.1f} docs/s after {summary.startup_seconds:.1f} s of start-up), "
        f"{summary.shards_written} shard(s) written, {summary.shards_skipped} already done: {summary.output}"
    )
