"""The GPU smoke check's CPU mode, so the script a GPU user runs cannot rot."""

import json

import pytest
from conftest import run_cli


@pytest.mark.slow
def test_gpu_smoke_cpu_mode_passes(me5_dir, tmp_path):
    # The FSDP checks run under trainer=fsdp_cpu (two gloo processes): training with the callback, the
    # export evaluated again (equal metrics), exact resume, GradCache refused, LoRA merged into the export.
    # Training, DDP and evaluate.py per family run in tests/test_families.py; they are skipped here.
    proc = run_cli(
        "benchmarks/gpu_smoke.py",
        "--cpu",
        "--tokenizer",
        str(me5_dir),
        "--families",
        "mbart50",
        "--hidden",
        "32",
        "--skip",
        "step,train,ddp,evaluate",
        "--out",
        str(tmp_path / "rows.json"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = {row["check"]: row["status"] for row in json.loads((tmp_path / "rows.json").read_text())}
    assert all(status == "pass" for status in rows.values()), rows
    assert {"fsdp/train+callback", "fsdp/export-equal", "fsdp/resume-exact", "fsdp/gradcache-refused", "fsdp/lora-merged", "faiss"} <= set(
        rows
    )
