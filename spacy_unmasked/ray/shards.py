"""Inputs and output shards of batch annotation (`spacy ray-apply`), free of Ray.

Inputs are read as `spacy apply` reads them and in its order: the files of a folder
sorted, `.spacy` and `.jsonl` files first, every other file as one plain-text document
after them. The documents are cut into shards of a fixed size; a shard is written to a
hidden temporary file and renamed when complete, so a file named ``shard-NNNNNN.spacy``
is always whole and a killed run resumes by skipping the shards that exist.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import srsly
from spacy.tokens import DocBin

from ..errors import AnnotationInputError
from .spacy_cli import walk_directory

MANIFEST = ".manifest.json"
SHARD_GLOB = "shard-*.spacy"


@dataclass(frozen=True)
class Piece:
    """A run of documents of one input file: byte offsets for ``jsonl``,
    document indices for ``spacy``, the whole file for ``text``."""

    path: str
    kind: str
    start: int
    stop: int


@dataclass
class Plan:
    """Shards (each a list of pieces) with their document counts, and the bad records."""

    shards: list[list[Piece]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def docs(self) -> int:
        return sum(self.counts)


def shard_name(index: int) -> str:
    """The file name of shard ``index``; names sort in document order."""
    return f"shard-{index:06d}.spacy"


def check_record(record: Any, *, text_key: str) -> str | None:
    """Why a JSONL record cannot be annotated, or None when it can."""
    if not isinstance(record, dict):
        return f"record is a {type(record).__name__}, not an object with a {text_key!r} key"
    if text_key not in record:
        keys = ", ".join(repr(k) for k in list(record)[:5]) or "none"
        return f"record has no {text_key!r} key (keys: {keys}); choose the key with --text-key"
    if not isinstance(record[text_key], str):
        return f"{text_key!r} must be a string, not {type(record[text_key]).__name__}"
    return None


def _jsonl_lines(path: Path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line) of the non-blank lines of a JSONL file between two offsets."""
    with path.open("rb") as file:
        file.seek(start)
        offset, number = start, 0
        for number, line in enumerate(file, 1):
            if stop is not None and offset >= stop:
                return
            if line.strip():
                yield number, offset, line
            offset += len(line)


def _parse(line: bytes, *, text_key: str) -> tuple[Any, str | None]:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"not valid JSON ({err})"
    return record, check_record(record, text_key=text_key)


def _fail_unreadable(path: Path, err: Exception, what: str) -> AnnotationInputError:
    return AnnotationInputError(f"Cannot read {path}: {type(err).__name__}: {err}. {what}")


def plan_shards(data_path: Path, *, text_key: str, shard_size: int) -> Plan:
    """Read every input once (without keeping the texts), check each record and cut
    the valid documents into shards of ``shard_size`` in `spacy apply`'s order.
    Raises AnnotationInputError for a file that cannot be read at all."""
    if shard_size < 1:
        raise AnnotationInputError(f"--shard-size must be at least 1, not {shard_size}")
    if not data_path.exists():
        raise AnnotationInputError(
            f"Cannot find the input {data_path}: give a file or a folder of .spacy/.jsonl/text files"
        )
    paths = walk_directory(data_path)
    ordered = [p for p in paths if p.suffix in (".spacy", ".jsonl")] + [
        p for p in paths if p.suffix not in (".spacy", ".jsonl")
    ]
    plan = Plan()
    shard: list[Piece] = []

    def add(path: Path, kind: str, start: int, stop: int) -> None:
        nonlocal shard
        if plan.counts and plan.counts[-1] < shard_size:
            last = shard[-1]
            if last.path == str(path) and last.kind == kind:  # lines between are blank or reported
                shard[-1] = Piece(last.path, kind, last.start, stop)
            else:
                shard.append(Piece(str(path), kind, start, stop))
            plan.counts[-1] += 1
        else:
            shard = [Piece(str(path), kind, start, stop)]
            plan.shards.append(shard)
            plan.counts.append(1)

    for path in ordered:
        try:
            stat = path.stat()
        except OSError as err:
            raise _fail_unreadable(path, err, "Check that the file exists and is readable.") from err
        plan.inputs.append({"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        if path.suffix == ".spacy":
            try:
                n = len(DocBin().from_disk(path))
            except Exception as err:
                raise _fail_unreadable(path, err, "Is it a DocBin written by spaCy?") from err
            for i in range(n):
                add(path, "spacy", i, i + 1)
        elif path.suffix == ".jsonl":
            try:
                for number, offset, line in _jsonl_lines(path):
                    _, problem = _parse(line, text_key=text_key)
                    if problem:
                        plan.errors.append({"file": str(path), "line": number, "error": problem})
                    else:
                        add(path, "jsonl", offset, offset + len(line))
            except OSError as err:
                raise _fail_unreadable(path, err, "Check that the file is readable.") from err
        else:
            try:
                path.read_text(encoding="utf8")
            except (OSError, UnicodeDecodeError) as err:
                raise _fail_unreadable(path, err, "Plain-text inputs must be UTF-8 files.") from err
            add(path, "text", 0, 1)
    return plan


def read_piece(piece: Piece, *, text_key: str, id_key: str) -> Iterator[dict[str, Any]]:
    """The documents of a piece as rows: ``kind`` ("text" or "doc"), ``payload``
    (UTF-8 text or ``Doc.to_bytes``) and ``user`` (msgpack of user_data to set, or empty)."""
    path = Path(piece.path)
    if piece.kind == "spacy":
        from spacy.vocab import Vocab

        docs = list(DocBin().from_disk(path).get_docs(Vocab()))
        for doc in docs[piece.start : piece.stop]:
            yield {"kind": "doc", "payload": doc.to_bytes(exclude=["tensor"]), "user": b""}
    elif piece.kind == "jsonl":
        for _, _, line in _jsonl_lines(path, piece.start, piece.stop):
            record, problem = _parse(line, text_key=text_key)
            if problem:  # reported by plan_shards and left out there too
                continue
            user = srsly.msgpack_dumps({"id": record[id_key]}) if id_key in record else b""
            yield {"kind": "text", "payload": record[text_key].encode("utf8"), "user": user}
    else:
        text = path.read_text(encoding="utf8")
        yield {"kind": "text", "payload": text.encode("utf8"), "user": srsly.msgpack_dumps({"id": str(path)})}


def fingerprint(plan: Plan, *, model: str, text_key: str, id_key: str, shard_size: int) -> str:
    """A hash of what decides the shards' contents, stored in the manifest."""
    settings = {"model": model, "text_key": text_key, "id_key": id_key, "shard_size": shard_size}
    blob = json.dumps({"inputs": plan.inputs, **settings}, sort_keys=True).encode("utf8")
    return hashlib.sha256(blob).hexdigest()


class ShardFolder:
    """A folder of shards with a manifest; writes each shard atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when the folder holds none."""
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf8"))

    def open(self, *, key: str, counts: list[int], force: bool, settings: dict[str, Any]) -> list[int]:
        """Start or resume: check that the folder belongs to this run, remove leftover
        temporary files and return the indices of the shards still to write."""
        if self.path.exists() and not self.path.is_dir():
            raise AnnotationInputError(f"{self.path} is a file: name a folder, or an output ending in .spacy")
        manifest = self.manifest()
        if self.path.exists() and manifest is None and any(self.path.iterdir()):
            raise AnnotationInputError(
                f"{self.path} is not empty and holds no ray-apply manifest: choose a new or empty output folder"
            )
        if manifest is not None and (manifest["key"] != key or force):
            if not force:
                raise AnnotationInputError(
                    f"{self.path} holds shards of another run (other inputs, pipeline, --text-key, --id-key or "
                    "--shard-size): pass --force to start again, or choose another output"
                )
            self.clear()
            manifest = None
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(".shard-*.tmp*"):
            leftover.unlink()
        if manifest is None:
            self._write_manifest({"key": key, "counts": counts, "complete": False, **settings})
        return [i for i in range(len(counts)) if not (self.path / shard_name(i)).exists()]

    def clear(self) -> None:
        """Remove this folder's shards, temporary files and manifest (nothing else)."""
        for path in [*self.path.glob(SHARD_GLOB), *self.path.glob(".shard-*.tmp*"), self.manifest_path]:
            path.unlink(missing_ok=True)

    def write(self, index: int, parts: Iterable[bytes]) -> Path:
        """Merge serialized DocBins into shard ``index``: a temporary file, renamed when whole."""
        docbin = DocBin(store_user_data=True)
        for part in parts:
            docbin.merge(DocBin(store_user_data=True).from_bytes(part))
        target = self.path / shard_name(index)
        temporary = self.path / f".{target.name}.tmp{os.getpid()}"
        atomic_write(temporary, target, docbin.to_bytes())
        return target

    def finish(self) -> None:
        """Mark the run complete in the manifest."""
        manifest = self.manifest() or {}
        self._write_manifest({**manifest, "complete": True})

    def shards(self) -> list[Path]:
        """The shard files, in document order."""
        return sorted(self.path.glob(SHARD_GLOB))

    def _write_manifest(self, content: dict[str, Any]) -> None:
        temporary = self.path / f"{MANIFEST}.tmp{os.getpid()}"
        atomic_write(temporary, self.manifest_path, json.dumps(content, indent=2).encode("utf8"))


def atomic_write(temporary: Path, target: Path, data: bytes) -> None:
    """Write ``data`` to ``temporary``, flush it to disk and rename it to ``target``."""
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)


def merge_shards(folder: ShardFolder, output: Path) -> int:
    """Join a folder's shards into one DocBin file (written atomically); returns the document count."""
    docbin = DocBin(store_user_data=True)
    for shard in folder.shards():
        docbin.merge(DocBin(store_user_data=True).from_disk(shard))
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output.with_name(f".{output.name}.tmp{os.getpid()}"), output, docbin.to_bytes())
    return len(docbin)


def remove_folder(folder: ShardFolder) -> None:
    """Remove a working folder of shards that this tool created (it holds a manifest)."""
    if folder.manifest() is not None:
        shutil.rmtree(folder.path)
