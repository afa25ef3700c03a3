"""Readers never see partial data: a reader looping while another process appends, a writer killed with
SIGKILL mid-batch, and many threads sharing one Store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pytest
from store_fixtures import LAYERS, NUM_STEPS, activation_value, batch, manifest, write_run

from store import RunWriter, Store
from store.verify import verify

FIXTURES = Path(__file__).with_name("store_fixtures.py")
REPO = Path(__file__).resolve().parents[1]


def _spawn(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return subprocess.Popen([sys.executable, str(FIXTURES), *map(str, args)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_consistent(st: Store, root: Path, batch_size: int) -> int:
    """Everything the store shows is whole batches, each with its activations and images; returns the count.

    The writer keeps appending while this runs, so each later read may see more batches, never fewer."""
    samples = st.samples(columns=["sample_id", "index", "image_path"])
    n = len(samples)
    assert n % batch_size == 0, f"partial batch visible: {n} samples"
    assert samples["index"].tolist() == list(range(n))
    assert all(png is not None for png in st.images(samples["sample_id"].tolist()))
    ids = [f"r1-{i:08d}" for i in range(10**4)]
    for layer in LAYERS:
        for step in range(NUM_STEPS):
            a = st.activations("demo", layer, step=step)
            m = len(a)
            assert m >= n and m % batch_size == 0, f"{layer}/{step}: {m} rows after {n} samples"
            assert a.sample_ids.tolist() == ids[:m]
            if m:
                np.testing.assert_allclose(a.matrix[m - 1], activation_value("r1", layer, step, m - 1).reshape(-1),
                                           rtol=1e-3, atol=1e-3)
    later = st.samples(columns=["sample_id"])["sample_id"].tolist()
    assert later == ids[:len(later)] and len(later) >= m, "activations of uncommitted samples were visible"
    # the documented raw glob sees whole batches too
    raw = duckdb.sql(f"SELECT count(*) FROM read_parquet('{root}/samples/**/*.parquet', hive_partitioning=true, "
                     "hive_types_autocast=false)").fetchall()[0][0] if n else 0
    assert raw >= n and raw % batch_size == 0
    return n


def test_reader_loops_while_another_process_appends(tmp_path):
    batches, batch_size = 25, 3
    proc = _spawn("append", tmp_path, batches, batch_size, 0.05)  # pauses so reads interleave even under load
    st = Store(tmp_path)
    seen, errors, loops = set(), [], 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            done = proc.poll() is not None
            try:
                seen.add(_check_consistent(st, tmp_path, batch_size))
            except Exception as e:  # collect, so the test reports every failure, not the first
                errors.append(repr(e))
            loops += 1
            if done:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert errors == [], "\n".join(errors[:5])
    assert max(seen) == batches * batch_size
    assert len(seen) >= 3, f"the reader did not overlap the writer (saw {sorted(seen)} in {loops} loops)"
    assert st.skipped == []
    assert Store(tmp_path).runs()["status"].tolist() == ["complete"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_batch_leaves_nothing_visible_and_resumes(tmp_path):
    batch_size = 4
    proc = _spawn("hang-in-commit", tmp_path, batch_size)
    try:
        line = proc.stdout.readline()  # the writer is now inside write_batch, before its commit
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert line.strip() == "HANGING", err
    assert proc.returncode == -signal.SIGKILL

    # On disk: the killed batch's images and activation parts (orphans) and a partial staging file.
    orphans = sorted(p.name for p in (tmp_path / "activations").rglob("part-00000008-00000011.parquet"))
    assert len(orphans) == len(LAYERS)
    assert (tmp_path / "images/model=demo/run_id=r1/part-00000008-00000011.parquet").exists()
    assert list((tmp_path / "samples").rglob("*.tmp-*"))

    st = Store(tmp_path)
    assert _check_consistent(st, tmp_path, batch_size) == 2 * batch_size
    assert st.runs()["status"].tolist() == ["running"]
    report = verify(tmp_path)
    assert report.ok and report.staging and len(report.orphans) == len(LAYERS) + 1

    w = RunWriter(tmp_path, manifest("r1", num_samples=3 * batch_size))  # resume
    assert w.done_indices().tolist() == list(range(2 * batch_size))
    assert not list(tmp_path.rglob("*.tmp-*"))
    assert not list((tmp_path / "activations").rglob("part-00000008-00000011.parquet"))
    assert not (tmp_path / "images/model=demo/run_id=r1/part-00000008-00000011.parquet").exists()
    idx = list(range(2 * batch_size, 3 * batch_size))
    w.write_batch(idx, *batch("r1", idx))
    w.finish()
    assert _check_consistent(Store(tmp_path), tmp_path, batch_size) == 3 * batch_size
    clean = verify(tmp_path)
    assert clean.ok and not clean.staging and not clean.orphans


def test_many_threads_share_one_store(tmp_path):
    write_run(tmp_path, "r1", n=12, batch_size=4)
    write_run(tmp_path, "r2", n=6, batch_size=3)
    st = Store(tmp_path)

    def work(k: int):
        kind = k % 5
        if kind == 0:
            return ("samples", tuple(st.samples(run_ids=["r2"] if k % 2 else None)["sample_id"]))
        if kind == 1:
            a = st.activations("demo", "enc", step=k % 2)
            return ("acts", a.sample_ids.tolist()[-1], float(a.matrix.sum()))
        if kind == 2:
            cur = st.cursor()
            return ("sql", cur.execute("SELECT count(*) FROM activations WHERE layer = 'mid'").fetchone()[0])
        if kind == 3:
            return ("runs", tuple(st.runs()["run_id"]), st.data_version("demo", "mid"))
        return ("steps", tuple(st.steps("demo")["step"]), tuple(st.layers("demo")))

    serial = [work(k) for k in range(10)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(200)))
    for k, r in enumerate(results):
        assert r == serial[k % 10]
