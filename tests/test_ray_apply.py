"""`spacy ray-apply`: the same documents as `spacy apply`, in order, resumable, with clear errors.

One local Ray (2 CPUs) serves the whole module; a tiny trained pipeline is the model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from spacy.cli.apply import apply as spacy_apply
from spacy.tokens import DocBin

from spacy_unmasked.ray.apply import PipelineLoadError, ray_apply
from spacy_unmasked.ray.shards import AnnotationInputError, plan_shards, shard_name

from .helpers import SAMPLE_TEXTS, make_nlp, train

ray = pytest.importorskip("ray")

TEXTS = SAMPLE_TEXTS
SHARD_SIZE = 4


@pytest.fixture(scope="module")
def cluster():
    """A quiet local Ray with 2 CPUs for the module; yields its address."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def pipeline(tiny_llama_dir, tmp_path_factory):
    nlp = make_nlp(tiny_llama_dir)
    train(nlp, steps=30, lr=3e-3)
    path = tmp_path_factory.mktemp("pipeline") / "nlp"
    nlp.to_disk(path)
    return path


def write_corpus(folder: Path, *, bad_lines: bool) -> Path:
    """records.jsonl (ids r0..r9), docs.spacy (2 docs with user_data) and 2 text files;
    with ``bad_lines``, records.jsonl also holds a blank line and two records that cannot be annotated."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"text": TEXTS[i % 5], "id": f"r{i}"}) for i in range(10)]
    if bad_lines:
        lines.insert(3, json.dumps({"body": "no text key", "id": "bad1"}))
        lines.insert(7, json.dumps({"text": 42, "id": "bad2"}))
        lines.insert(8, "")
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf8")
    blank = spacy.blank("en")
    docs = [blank(TEXTS[1]), blank(TEXTS[4])]
    for i, doc in enumerate(docs):
        doc.user_data["id"] = f"s{i}"
    DocBin(store_user_data=True, docs=docs).to_disk(folder / "docs.spacy")
    (folder / "a.txt").write_text(TEXTS[2], encoding="utf8")
    (folder / "b.txt").write_text(TEXTS[3], encoding="utf8")
    return folder


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return write_corpus(root / "clean", bad_lines=False), write_corpus(root / "dirty", bad_lines=True)


def read_docs(path: Path):
    """The documents of a .spacy file or of a folder of shards, in order."""
    files = sorted(path.glob("*.spacy")) if path.is_dir() else [path]
    vocab = spacy.blank("en").vocab
    return [doc for file in files for doc in DocBin().from_disk(file).get_docs(vocab)]


def annotations(docs):
    return [([t.text for t in d], [(e.start, e.end, e.label_) for e in d.ents]) for d in docs]


@pytest.fixture(scope="module")
def expected(pipeline, corpora, tmp_path_factory):
    """`spacy apply` on the clean corpus."""
    out = tmp_path_factory.mktemp("apply") / "out.spacy"
    spacy_apply(corpora[0], out, str(pipeline), "text", 4, 1)
    return read_docs(out)


@pytest.fixture(scope="module")
def cli_run(cluster, pipeline, corpora, tmp_path_factory):
    """The real CLI (through the spacy_cli entry point) on the dirty corpus, into a folder of shards."""
    out = tmp_path_factory.mktemp("cli") / "shards"
    command = [sys.executable, "-m", "spacy", "ray-apply", str(pipeline), str(corpora[1]), str(out)]
    options = ["--address", cluster, "--num-actors", "2", "--batch-size", "3", "--shard-size", str(SHARD_SIZE)]
    result = subprocess.run([*command, *options, "--skip-errors"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, " ".join(result.stdout.split())  # wasabi wraps long lines


def test_cli_output_equals_spacy_apply(cli_run, expected):
    out, stdout = cli_run
    assert sum(len(d.ents) for d in expected) > 0  # the comparison below is not between empty annotations
    assert annotations(read_docs(out)) == annotations(expected)
    assert [p.name for p in sorted(out.glob("*.spacy"))] == [shard_name(i) for i in range(4)]  # 14 docs, 4 per shard
    assert "14 docs in" in stdout and "docs/s" in stdout and "4 shard(s) written, 0 already done" in stdout


def test_documents_keep_their_order_and_ids(cli_run):
    ids = [d.user_data.get("id") for d in read_docs(cli_run[0])]
    # .jsonl and .spacy first (sorted), text files last, as `spacy apply` reads a folder
    assert ids[:12] == ["s0", "s1"] + [f"r{i}" for i in range(10)]
    assert [Path(i).name for i in ids[12:]] == ["a.txt", "b.txt"]


def test_bad_records_are_listed_not_dropped_silently(cli_run, corpora):
    out, stdout = cli_run
    errors = [json.loads(line) for line in out.with_name("shards.errors.jsonl").read_text().splitlines()]
    records = str(corpora[1] / "records.jsonl")
    assert errors == [
        {
            "file": records,
            "line": 4,
            "error": "record has no 'text' key (keys: 'body', 'id'); choose the key with --text-key",
        },
        {"file": records, "line": 8, "error": "'text' must be a string, not int"},
    ]
    assert "Left out the bad records listed in" in stdout


def test_bad_records_fail_the_run_by_default(pipeline, corpora, tmp_path):
    with pytest.raises(
        AnnotationInputError, match=r"2 input record\(s\) cannot be annotated, e.g. .*records.jsonl line 4"
    ):
        ray_apply(str(pipeline), corpora[1], tmp_path / "out.spacy")
    assert (tmp_path / "out.spacy.errors.jsonl").exists() and not (tmp_path / "out.spacy").exists()


def test_a_killed_run_resumes_to_the_same_result(cluster, cli_run, pipeline, corpora, tmp_path):
    """A kill leaves finished shards, a lost one and a half-written temporary file: the rerun
    (here into one .spacy file) writes only the missing shard and gives the uninterrupted result."""
    out = tmp_path / "out.spacy"
    parts = tmp_path / ".out.spacy.parts"
    shutil.copytree(cli_run[0], parts)
    (parts / shard_name(2)).unlink()
    (parts / f".{shard_name(2)}.tmp999").write_bytes(b"half a shard")
    summary = ray_apply(
        str(pipeline), corpora[1], out, num_actors=1, batch_size=3, shard_size=SHARD_SIZE, skip_errors=True
    )
    assert (summary.shards_written, summary.shards_skipped, summary.docs) == (1, 3, SHARD_SIZE)
    assert 0 < summary.startup_seconds < summary.seconds and summary.steady_docs_per_second > 0
    assert annotations(read_docs(out)) == annotations(read_docs(cli_run[0]))
    assert [d.user_data.get("id") for d in read_docs(out)] == [d.user_data.get("id") for d in read_docs(cli_run[0])]
    assert not parts.exists()


def test_output_of_another_run_is_not_mixed_in(cli_run, pipeline, corpora):
    with pytest.raises(AnnotationInputError, match=r"holds shards of another run .*pass --force"):
        ray_apply(str(pipeline), corpora[1], cli_run[0], shard_size=SHARD_SIZE + 1, skip_errors=True)


def test_a_pipeline_that_fails_to_load_fails_the_run(cluster, corpora, tmp_path):
    missing = tmp_path / "no-pipeline"
    with pytest.raises(PipelineLoadError, match=r"failed to load on a Ray actor: OSError: \[E050\] Can't find model"):
        ray_apply(str(missing), corpora[0] / "a.txt", tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.spacy"))


def test_unreadable_inputs_are_named(tmp_path):
    (tmp_path / "broken.spacy").write_bytes(b"not a docbin")
    with pytest.raises(AnnotationInputError, match=r"Cannot read .*broken.spacy: .*Is it a DocBin written by spaCy"):
        plan_shards(tmp_path, text_key="text", shard_size=10)
    (tmp_path / "broken.spacy").unlink()
    (tmp_path / "latin1.txt").write_bytes("Zürich".encode("latin-1"))
    with pytest.raises(AnnotationInputError, match=r"Cannot read .*latin1.txt: UnicodeDecodeError.*must be UTF-8"):
        plan_shards(tmp_path, text_key="text", shard_size=10)
    with pytest.raises(AnnotationInputError, match="Cannot find the input"):
        plan_shards(tmp_path / "nowhere", text_key="text", shard_size=10)


def test_invalid_json_lines_are_bad_records(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"text": "cut\n["a list"]\n', encoding="utf8")
    plan = plan_shards(tmp_path, text_key="text", shard_size=10)
    assert plan.counts == [1]
    assert [(e["line"], e["error"].split(" (")[0]) for e in plan.errors] == [
        (2, "not valid JSON"),
        (3, "record is a list, not an object with a 'text' key"),
    ]


def test_shards_cut_at_the_shard_size_across_files(corpora):
    plan = plan_shards(corpora[1], text_key="text", shard_size=SHARD_SIZE)
    assert plan.counts == [4, 4, 4, 2]
    assert [p.kind for p in plan.shards[0]] == ["spacy", "jsonl"]  # docs.spacy sorts before records.jsonl
    assert [p.kind for p in plan.shards[-1]] == ["text", "text"]


def test_a_foreign_folder_is_never_written_into(pipeline, corpora, tmp_path):
    (tmp_path / "notes.md").write_text("mine")
    with pytest.raises(AnnotationInputError, match="not empty and holds no ray-apply manifest"):
        ray_apply(str(pipeline), corpora[0], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.md"]
    (tmp_path / "out.txt").write_text("mine")
    with pytest.raises(AnnotationInputError, match=r"out.txt is a file: name a folder, or an output ending in .spacy"):
        ray_apply(str(pipeline), corpora[0], tmp_path / "out.txt")
