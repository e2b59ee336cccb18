"""The GPU smoke check's CPU mode, so the script a GPU user runs cannot rot."""
import json

import pytest
from conftest import run_cli


@pytest.mark.slow
def test_gpu_smoke_cpu_mode_passes(me5_dir, tmp_path):
    proc = run_cli("benchmarks/gpu_smoke.py", "--cpu", "--tokenizer", str(me5_dir), "--families", "mbart50", "--hidden", "32",
                   "--out", str(tmp_path / "rows.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = {row["check"]: row["status"] for row in json.loads((tmp_path / "rows.json").read_text())}
    assert rows["fsdp"] == "skip" and all(status == "pass" for check, status in rows.items() if check != "fsdp")
    # One family (the one with language codes): every family's own path runs in tests/test_families.py.
    assert {"step/mbart50", "train/mbart50", "ddp", "evaluate", "faiss"} <= set(rows)
