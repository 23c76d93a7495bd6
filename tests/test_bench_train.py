"""benchmarks/bench_train.py runs end to end on a tiny model (figures come from real runs, not tests)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def test_bench_train_smoke_measures_both_arms_in_both_modes(tiny_llama_dir, tmp_path):
    output = tmp_path / "train.json"
    arguments = ["--model", str(tiny_llama_dir), "--num-layers", "null", "--corpus", "builtin", "--mode", "both"]
    arguments += ["--updates", "2", "--warmup", "0", "--profile-updates", "1", "--init-examples", "8"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, "--out", str(output)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())
    assert set(results["modes"]) == {"lora", "qlora"}
    for mode, row in results["modes"].items():
        for arm in ("spacy", "plain"):
            data = row[arm]
            assert len(data["seconds"]) == 2 and data["median_s"] > 0, (mode, arm)
            assert data["peak_rss_mb"] > 0 and data["peak_increase_mb"] > 0, (mode, arm)
            assert data["breakdown"]["seconds_per_update"] > 0, (mode, arm)
        assert row["time_ratio"] > 0 and row["memory_ratio"] > 0 and row["peak_rss_ratio"] > 0, mode
        assert row["overhead_ratio"] > 0, mode
        # the plain loop feeds the decoder exactly the pieces the pipeline does, through the same layers
        assert row["same_inputs"] is True, mode
        assert row["spacy"]["decoder_calls_per_update"] >= 1, mode
        assert row["spacy"]["num_layers"] == row["plain"]["num_layers"] == 4, mode
        assert row["spacy"]["trainable_decoder_params"] == row["plain"]["trainable_decoder_params"], mode
        assert row["spacy"]["unmasked"] == row["plain"]["unmasked"], mode
        assert row["spacy"]["n_labels"] == row["plain"]["n_labels"], mode
        assert row["spacy"]["torch_threads"] == row["plain"]["torch_threads"] == 1, mode
        parts = row["spacy"]["breakdown"]["parts"]
        assert parts["decoder forward (peft model call)"]["seconds"] > 0, mode
        assert parts["tokenize + align (pieces.encode_spans)"]["seconds"] > 0, mode
        assert row["spacy"]["cprofile"]["top_own_time"], mode
    assert results["modes"]["qlora"]["spacy"]["quantization"]
    assert not results["modes"]["lora"]["spacy"]["quantization"]
    assert "A/B" in result.stdout
