"""The GPU throughput script must run here too (tiny UNet on the CPU), so the lent GPU is never wasted."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_sdxl_throughput.py"


def test_sdxl_throughput_script_runs_tiny_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_sdxl_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--tiny", "--device", "cpu", "--batches", "1", "--layers", "mid,up1,down0.res0"])
    assert set(result["samples_per_s"]) == {"bare", "hooks", "store", "store-full"}
    assert result["ratio"]["bare"] == 1.0 and all(r > 0 for r in result["ratio"].values())
    # full maps of mid (64x4x4), up1 (32x8x8), down0.res0 (32x8x8) in float16, plus Parquet overhead
    assert 2 * (64 * 16 + 2 * 32 * 64) < result["bytes_per_sample"]["store-full"] < 40_000
    assert result["finite"]
    out = capsys.readouterr().out
    assert "device: CPU" in out and "ratio" in out and "result: " in out
