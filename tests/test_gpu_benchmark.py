"""benchmarks/gpu.py: its smoke run (the real run's code, tiny, on the CPU) and the full-size models it builds."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_run_measures_every_configuration(tmp_path):
    out = tmp_path / "gpu_results.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = out.read_text()
    assert "Smoke run" in report and "FAILED" not in report
    rows = {line.split(" | ")[0].strip("| "): line for line in report.splitlines() if line.startswith("| ")}
    for label, what_ran in [("plain KSampler", "-"), ('DATE, every_k_steps "10"', "1 updates at steps [0]"),
                            ('DATE, every_k_steps "1"', "10 updates"), ("MinorityPrompt, defaults", "1 optimized"),
                            ("MinorityPrompt, gradient_checkpointing", "1 optimized"),
                            ("IPGO, one epoch (K = 2)", "1 epochs, 1 optimizer steps")]:
        cells = rows[label].strip("|").split(" | ")
        assert what_ran in cells[1], rows[label]
        assert float(cells[2]) > 0 and float(cells[5].split()[0]) > 0.1, rows[label]  # seconds, GiB
    probe = re.search(r"([\d.]+) GiB of weights shared, ([\d.]+) MiB copied", report)
    assert probe and float(probe.group(1)) > 0.05 and float(probe.group(2)) == 0.0, report


@pytest.mark.parametrize("family, model_class, unet_params", [("sd15", "SD15", 859.52e6), ("sdxl", "SDXL", 2567.46e6)])
def test_full_size_checkpoints_are_detected_as_their_family(comfy, family, model_class, unet_params):
    import comfy.model_detection

    from benchmarks.bench_models import full_size_shapes

    shapes = full_size_shapes(family)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    config = comfy.model_detection.model_config_from_unet(state, "model.diffusion_model.")
    assert type(config).__name__ == model_class
    count = sum(math.prod(s) for k, s in shapes.items() if k.startswith("model.diffusion_model."))
    assert count == pytest.approx(unet_params, rel=1e-4)
    assert config.clip_target(state).clip.__name__ == ("SD1ClipModel" if family == "sd15" else "SDXLClipModel")
