"""The benchmark scripts run (on a tiny model; figures come from real runs, not tests)."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import save_tiny_pretrained

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny random Llama that bench.py's 'tiny' model is (4 layers)."""
    return save_tiny_pretrained(tmp_path_factory.mktemp("bench") / "tiny", "llama", num_hidden_layers=4)


def run_bench(*arguments) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench.py"), *map(str, arguments)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def precision_results(tiny_folder, tmp_path_factory) -> dict:
    """The precision plan's smoke run (every case, once, in one process)."""
    output = tmp_path_factory.mktemp("bench") / "precision.json"
    run_bench("--model", tiny_folder, "--plan", "precision", "--smoke", "--output", output)
    return json.loads(output.read_text())


def test_precision_plan_smoke_measures_every_case(precision_results):
    import torch

    from spacy_unmasked.hub import native_bfloat16

    results = precision_results
    rows = results["rows"]
    auto = "bfloat16" if native_bfloat16(torch.device("cpu")) else "float32"  # a quantized base's other weights
    expected = {
        "infer float32, unmerged (before)": ("float32", None, False),
        "infer float32, merged": ("float32", None, True),
        "infer bfloat16, unmerged": ("bfloat16", None, False),
        "infer bfloat16, merged": ("bfloat16", None, True),
        "infer nf4, quantized base": (auto, "4-bit", False),
        "infer nf4, dequantized (default)": (auto, "4-bit", False),
        "infer int8, quantized base": (auto, "8-bit", False),
        "infer int8, dequantized (default)": (auto, "8-bit", False),
    }
    for label, (dtype, quantized, merged) in expected.items():
        row = rows[label]
        assert (row["dtype"], row["quantized"], row["merged"]) == (dtype, quantized, merged), label
        if "quantized base" in label:
            assert row["inference"] == f"quantized {quantized}", label
        elif "dequantized" in label:
            assert row["inference"].startswith("dequantized") and row["inference"].endswith("adapters merged"), label
        assert row["words_per_second"] > 0 and row["peak_mb"] > 0 and row["base_mb"] > 0, label
    for precision, dtype, quantized in (
        ("float32", "float32", None),
        ("bfloat16", "bfloat16", None),
        ("nf4", auto, "4-bit"),
        ("int8", auto, "8-bit"),
    ):
        row = rows[f"train LoRA {precision}"]
        assert (row["dtype"], row["quantized"]) == (dtype, quantized), precision
        assert row["seconds_per_update"] > 0 and row["peak_mb"] > 0 and row["finite_loss"] is True, precision
    assert rows["infer float32, unmerged (before)"]["speedup_vs_float32"] == 1.0
    targets = results["targets"]
    assert targets["default_inference_speedup (>= 1.8)"] == rows["infer bfloat16, merged"]["speedup_vs_float32"]
    assert 0 < targets["nf4_model_memory_vs_float32 (<= 0.25)"] < 1
    served, bf16 = rows["infer nf4, dequantized (default)"], rows["infer bfloat16, merged"]
    assert targets["qlora_dequantized_vs_bfloat16_merged (>= 0.9)"] == (
        served["words_per_second"] / bf16["words_per_second"]
    )
    assert targets["qlora_dequantized_vs_float32_merged"] == (
        served["words_per_second"] / rows["infer float32, merged"]["words_per_second"]
    )
    assert len(results["load_average"]) == 2 and results["settings"]["torch_threads"] == 1


def test_model_memory_counts_parameters_and_buffers(precision_results, tiny_folder):
    """Unquantized model memory equals transformers' own footprint of the stock
    model in that dtype; quantized bases are smaller still."""
    import torch
    import transformers

    memory = precision_results["model_memory"]
    for dtype in ("float32", "bfloat16"):
        stock = transformers.AutoModel.from_pretrained(str(tiny_folder), torch_dtype=getattr(torch, dtype))
        assert memory[f"{dtype}_mb"] * 2**20 == stock.get_memory_footprint(), dtype
    assert memory["nf4_mb"] < memory["int8_mb"] < memory["bfloat16_mb"]


def test_a_case_runs_in_its_own_process_and_prints_one_json_row(tiny_folder):
    result = run_bench("--case", "train", "--lora", "--precision", "nf4", "--smoke", "--model", tiny_folder)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["quantized"] == "4-bit" and row["seconds_per_update"] > 0 and row["finite_loss"] is True


def test_gpu_check_smoke_runs_on_cpu():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--model", "tiny", "--allow-cpu", "--steps", "2"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["semantics_pass"] is True and row["loss_falls"] is True
    assert row["lora_dtype"] == "torch.float32" and row["finite_features"] is True
    assert row["seconds_per_update"] > 0 and row["words_per_second"] > 0


def test_gpu_check_refuses_to_pretend_without_a_gpu():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--model", "tiny"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "No CUDA GPU found" in result.stderr


def test_padding_plan_smoke_compares_ordering_on_and_off(tiny_folder, tmp_path):
    output = tmp_path / "padding.json"
    run_bench("--model", tiny_folder, "--plan", "padding", "--smoke", "--output", output)
    results = json.loads(output.read_text())
    rows = results["rows"]
    assert len(rows) == 8
    for corpus in ("tweets", "mixed"):
        for batch_size in (16, 128):
            on = rows[f"{corpus}, batch {batch_size}, ordered"]
            off = rows[f"{corpus}, batch {batch_size}, unordered"]
            assert on["words"] == off["words"] > 0
            assert on["entities_digest"] == off["entities_digest"]
            assert on["decoder_calls"] >= off["decoder_calls"]
            assert on["real_pieces_share"] >= off["real_pieces_share"]
            assert results["targets"][f"{corpus}, batch {batch_size}: same entities"] is True
    # a paragraph among tweets is where ordering pays: more calls, far less padding
    mixed_on, mixed_off = rows["mixed, batch 16, ordered"], rows["mixed, batch 16, unordered"]
    assert mixed_on["decoder_calls"] > mixed_off["decoder_calls"]
    assert mixed_on["real_pieces_share"] > 1.5 * mixed_off["real_pieces_share"]


def test_precision_plan_without_training_rows():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_module", BENCHMARKS / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pipelines = {p: Path(p) for p in ("float32", "bfloat16", "nf4", "int8")}
    full, inference = bench.precision_plan(pipelines), bench.precision_plan(pipelines, train=False)
    assert [label for label, _, _ in full if label.startswith("train")] == [
        "train LoRA float32",
        "train LoRA bfloat16",
        "train LoRA nf4",
        "train LoRA int8",
    ]
    assert inference == [row for row in full if not row[0].startswith("train")]


def test_table_plan_smoke_fills_every_row_and_target(tiny_folder, tmp_path):
    """The summary table's run: guards, loaded pipelines, ordering and the training
    comparison, each present and computed from its own rows."""
    output = tmp_path / "table.json"
    run_bench("--model", tiny_folder, "--plan", "table", "--smoke", "--output", output)
    results = json.loads(output.read_text())
    rows, targets = results["rows"], results["targets"]
    for precision, quantized in (("float32", None), ("bfloat16", None), ("nf4", "4-bit")):
        guard = rows[f"guard: {precision} pipeline vs forward"]
        assert guard["quantized"] == quantized and guard["pipeline_vs_forward"] > 0
        assert targets[f"{precision}_pipeline_vs_forward (~1.0)"] == guard["pipeline_vs_forward"]
    assert rows["infer nf4, quantized base"]["inference"] == "quantized 4-bit"
    assert rows["infer nf4, dequantized (default)"]["inference"].startswith("dequantized")
    assert rows["infer bfloat16, merged"]["merged"] is True
    dequantized = rows["infer nf4, dequantized (default)"]["words_per_second"]
    assert targets["qlora_dequantized_vs_bfloat16_merged (>= 0.9)"] == pytest.approx(
        dequantized / rows["infer bfloat16, merged"]["words_per_second"]
    )
    fastest = max(rows[f"infer {p}, merged"]["words_per_second"] for p in ("float32", "bfloat16"))
    assert targets["qlora_dequantized_vs_fastest_merged (>= 0.9)"] == pytest.approx(dequantized / fastest)
    for corpus in ("tweets", "mixed"):
        for batch_size in (16, 128):
            assert targets[f"{corpus}, batch {batch_size}: same entities"] is True
            assert rows[f"{corpus}, batch {batch_size}, ordered"]["words"] > 0
    for mode in ("lora", "qlora"):
        comparison = results["training"]["modes"][mode]
        assert targets[f"train {mode}: same decoder inputs"] is True
        assert targets[f"train {mode}: spacy vs plain time (<= 1.1)"] == comparison["time_ratio"] > 0
    assert set(results["settings"]) >= {"native_bfloat16", "padding_docs", "rounds"}


def test_serve_benchmark_pipe_only_measures_one_text_per_call_and_batches(tmp_path):
    """bench_serve.py --pipe-only: nlp.pipe alone, one text per call and in batches, per thread count."""
    import os

    output = tmp_path / "pipe.json"
    arguments = ["tiny", "--pipe-only", "--requests", "8", "--max-batch-size", "4", "--output", str(output)]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_serve.py"), *arguments],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["pipe"]
    expected = [(threads, batch) for threads in sorted({os.cpu_count() or 1, 1}, reverse=True) for batch in (1, 4)]
    assert [(row["threads"], row["batch_size"]) for row in rows] == expected
    assert all(row["texts_per_second"] > 0 for row in rows)
    assert "thread(s), batch 4:" in result.stdout


def test_pipelines_benchmark_measures_each_saved_pipeline_per_round(tmp_path):
    """bench_pipelines.py: every pipeline in its own process, once per round, over every doc of the corpus
    (one round: each case starts an interpreter with spaCy and torch)."""
    import spacy
    from spacy.tokens import DocBin

    texts = ["Paris is nice", "I met Ada Lovelace in London today", "ok"]
    nlp = spacy.blank("en")
    DocBin(docs=[nlp(text) for text in texts]).to_disk(tmp_path / "test.spacy")
    nlp.to_disk(tmp_path / "blank")
    nlp.add_pipe("sentencizer")
    nlp.to_disk(tmp_path / "sentences")
    output = tmp_path / "speed.json"
    command = [sys.executable, str(BENCHMARKS / "bench_pipelines.py"), str(tmp_path / "test.spacy"), "--rounds", "1"]
    command += ["--pipeline", f"blank={tmp_path / 'blank'}", "--pipeline", f"sentences={tmp_path / 'sentences'}"]
    result = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())
    assert list(results["rows"]) == ["blank", "sentences"] and results["threads"] == 1
    for name, row in results["rows"].items():
        assert (row["docs"], row["words"]) == (3, sum(len(nlp.make_doc(text)) for text in texts)), name
        assert len(row["rounds"]) == 1 and row["words_per_second"] == statistics.median(row["rounds"]) > 0
        assert row["load_seconds"] > 0 and row["pipeline"] == str(tmp_path / name)
    assert len(results["load_average"]) == 2 and "AVX512-BF16" in results["machine"]
    measured = [line.split()[2] for line in result.stdout.splitlines() if line.startswith("round")]
    assert measured == ["blank", "sentences"]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [("blank", "--pipeline takes NAME=PATH"), ("x=missing", "is not a saved pipeline (no config.cfg)")],
)
def test_pipelines_benchmark_names_bad_arguments(tmp_path, pipeline, message):
    (tmp_path / "test.spacy").write_bytes(b"")
    command = [sys.executable, str(BENCHMARKS / "bench_pipelines.py"), str(tmp_path / "test.spacy")]
    result = subprocess.run([*command, "--pipeline", pipeline], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "no --pipeline given" in result.stderr
