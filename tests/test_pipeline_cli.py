"""The `python -m pipeline` command line: layers, clear errors, torchrun sharding, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pipeline.__main__ import main
from store import Store

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240, **kw)


def test_layers_lists_names_and_shapes_without_a_checkpoint(capsys):
    assert main(["layers", "--model", "imagenet"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "(midblock)" in lines["dec.8x8_in0"] and "768x8x8" in lines["dec.8x8_in0"]
    assert "(encoder_bottleneck)" in lines["enc.8x8_block2"] and "model.enc.8x8_block2" in lines["enc.8x8_block2"]
    assert "192x64x64" in lines["enc.64x64_conv"] and "dec.64x64_block3" in lines
    assert len(lines) == 16 + 21


def test_generate_reports_unknown_layers_and_bad_checkpoints(tmp_path, demo_checkpoint, capsys):
    code = main(["generate", "--model", "demo", "--checkpoint", str(demo_checkpoint), "--num-samples", "2",
                 "--layers", "midblok", "--store", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown layer(s) midblok" in err and "encoder_bottleneck" in err

    wrong = tmp_path / "wrong.safetensors"
    save_file({"model.map_layer0.weight": torch.zeros(2, 2)}, wrong)
    code = main(["generate", "--model", "demo", "--checkpoint", str(wrong), "--num-samples", "2",
                 "--store", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "model.enc." in err
    assert not (tmp_path / "samples").exists()


def _store_contents(root):
    st = Store(root)
    samples = st.samples(model="demo").sort_values("sample_id")
    acts = st.activations("demo", "midblock", step=0)
    order = np.argsort(acts.sample_ids)
    return samples, acts.sample_ids[order], acts.matrix[order]


def test_torchrun_shards_batches_over_ranks(tmp_path, demo_checkpoint):
    common = ["--model", "demo", "--checkpoint", str(demo_checkpoint), "--num-samples", "12", "--steps", "2",
              "--layers", "midblock", "--batch-size", "3", "--seed", "5", "--quiet"]
    single = _cli("-m", "pipeline", "generate", *common, "--store", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    sharded = _cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipeline",
                   "generate", *common, "--store", str(tmp_path / "two"))
    assert sharded.returncode == 0, sharded.stderr
    parts = sorted(p.name for p in (tmp_path / "two" / "samples").rglob("*.parquet"))
    assert len(parts) == 4  # 4 batches of 3, two per rank
    a, b = _store_contents(tmp_path / "one"), _store_contents(tmp_path / "two")
    assert list(a[0].sample_id) == list(b[0].sample_id) and len(set(b[0].sample_id)) == 12
    assert list(a[0].class_id) == list(b[0].class_id)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[2], b[2], atol=2e-3, rtol=2e-3)
    assert Store(tmp_path / "two").runs().status.tolist() == ["complete"]


def test_killed_run_resumes_to_exactly_the_missing_samples(tmp_path, demo_checkpoint):
    args = ["-m", "pipeline", "generate", "--model", "demo", "--checkpoint", str(demo_checkpoint),
            "--num-samples", "400", "--layers", "midblock,encoder_bottleneck", "--batch-size", "8",
            "--store", str(tmp_path), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    samples_dir = tmp_path / "samples"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(samples_dir.rglob("*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = len(Store(tmp_path).samples(model="demo"))
    assert 0 < before < 400

    target = max(20, before + 16)
    done = _cli(*[str(target) if a == "400" else a for a in args])
    assert done.returncode == 0, done.stderr
    samples = Store(tmp_path).samples(model="demo")
    assert len(samples) == len(set(samples.sample_id)) == target
    assert sorted(samples["index"]) == list(range(len(samples)))
    verify = _cli("-m", "store", "verify", str(tmp_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
