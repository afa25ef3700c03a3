"""Corrupt parts are skipped with a warning naming them; `python -m store verify` finds what is wrong."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from store_fixtures import write_run

from store import Store
from store.__main__ import main
from store.verify import verify

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, real: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m store ARGS`: in a real subprocess, or in this process (faster) through its main()."""
    args = [str(a) for a in args]
    if real:
        return subprocess.run([sys.executable, "-m", "store", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture
def root(tmp_path):
    write_run(tmp_path, "r1", n=8, batch_size=4)
    return tmp_path


def _truncate(path: Path, keep: int = 50) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_corrupt_activation_part_is_skipped_with_warning(root):
    part = root / "activations/model=demo/layer=enc/run_id=r1/part-00000004-00000007.parquet"
    _truncate(part)
    st = Store(root)
    with pytest.warns(RuntimeWarning, match=r"skipping corrupt file .*layer=enc.*part-00000004-00000007\.parquet"):
        a = st.activations("demo", "enc")
    assert a.sample_ids.tolist() == [f"r1-{i:08d}" for i in range(4)]  # the rest keeps working
    assert st.skipped == [str(part)]
    assert len(st.activations("demo", "mid")) == 8 and len(st.samples()) == 8
    assert st.cursor().execute("SELECT count(*) FROM activations WHERE layer = 'enc'").fetchone()[0] == 8


def test_corrupt_samples_part_is_skipped_with_warning(root):
    part = root / "samples/model=demo/run_id=r1/part-00000000-00000003.parquet"
    part.write_bytes(b"this is not parquet at all")
    st = Store(root)
    with pytest.warns(RuntimeWarning, match="part-00000000-00000003"):
        df = st.samples()
    assert df["index"].tolist() == [4, 5, 6, 7]
    # its batch is not committed any more, so its activations are not shown either
    with pytest.warns(RuntimeWarning, match="part-00000000-00000003"):
        a = Store(root).activations("demo", "enc")
    assert a.sample_ids.tolist() == [f"r1-{i:08d}" for i in range(4, 8)]


def test_damaged_pages_behind_a_good_footer_are_skipped(root):
    """A file whose footer parses but whose compressed pages do not: DuckDB fails, the reader checks
    every file in full, skips the bad one and answers from the rest."""
    part = root / "samples/model=demo/run_id=r1/part-00000004-00000007.parquet"
    data = bytearray(part.read_bytes())
    for i in range(8, len(data) // 2):
        data[i] ^= 0x5A
    part.write_bytes(bytes(data))
    st = Store(root)
    with pytest.warns(RuntimeWarning, match="part-00000004-00000007"):
        df = st.samples(columns=["sample_id", "label"])
    assert df["sample_id"].tolist() == [f"r1-{i:08d}" for i in range(4)]
    assert str(part) in st.skipped


def test_verify_clean_store_exits_0(root):
    res = _cli("verify", root, real=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout and "0 corrupt" in res.stdout
    info = _cli("info", root)
    assert info.returncode == 0 and "model demo: 8 samples, 2 layers, steps [0, 1]" in info.stdout


def test_verify_reports_foreign_files_exit_1(root):
    (root / "samples/x.csv").write_text("a,b\n")
    (root / "notes.txt").write_text("hi")
    res = _cli("verify", root, real=True)
    assert res.returncode == 1
    assert "FOREIGN  samples/x.csv" in res.stdout and "FOREIGN  notes.txt" in res.stdout


def test_verify_reports_corrupt_part_exit_1(root):
    _truncate(root / "activations/model=demo/layer=mid/run_id=r1/part-00000000-00000003.parquet")
    res = _cli("verify", root)
    assert res.returncode == 1
    assert "CORRUPT  activations/model=demo/layer=mid/run_id=r1/part-00000000-00000003.parquet" in res.stdout


def test_verify_finds_flipped_bits_in_vectors(root):
    """Uncompressed vector pages decode whatever their bytes are; the page checksums catch the change
    (`verify`, and the reader, which skips the part rather than return the changed values)."""
    part = root / "activations/model=demo/layer=mid/run_id=r1/part-00000004-00000007.parquet"
    before = Store(root).activations("demo", "mid").matrix
    data = bytearray(part.read_bytes())
    cell = pq.read_table(part, columns=["vector"])["vector"][1].as_py()  # one row's stored bytes
    at = bytes(data).index(cell)
    data[at + 10] ^= 0xFF  # a bit pattern inside that vector: still decodes, to different values
    part.write_bytes(bytes(data))
    assert pq.read_table(part, columns=["vector"])["vector"][1].as_py() != cell  # decodes without error
    with pytest.warns(RuntimeWarning, match="part-00000004-00000007"):
        after = Store(root).activations("demo", "mid").matrix
    np.testing.assert_array_equal(after, before[:4])
    report = verify(root)
    assert not report.ok and [p for p, _ in report.corrupt] == [part.relative_to(root).as_posix()]


def test_verify_reports_missing_images_exit_1(root):
    (root / "images/model=demo/run_id=r1/part-00000004-00000007.parquet").unlink()
    res = _cli("verify", root)
    assert res.returncode == 1
    for i in range(4, 8):
        assert f"MISSING  images/model=demo/run_id=r1/part-00000004-00000007.parquet (image of r1-{i:08d})" \
            in res.stdout


def test_verify_reports_missing_activation_part_exit_1(root):
    (root / "activations/model=demo/layer=mid/run_id=r1/part-00000004-00000007.parquet").unlink()
    res = _cli("verify", root)
    assert res.returncode == 1
    assert ("MISSING  activations/model=demo/layer=mid/run_id=r1/part-00000004-00000007.parquet "
            "(activations of a committed batch)") in res.stdout


def test_verify_notes_staging_and_orphans_exit_0(root):
    folder = root / "activations/model=demo/layer=enc/run_id=r1"
    (folder / "part-00000008-00000009.parquet").write_bytes(
        (folder / "part-00000000-00000003.parquet").read_bytes())  # orphan: no samples part of that name
    (root / "samples/model=demo/run_id=r1/part-00000008-00000009.parquet.tmp-123-abcd").write_bytes(b"PAR1")
    res = _cli("verify", root)
    assert res.returncode == 0, res.stdout
    assert "note: staging leftover samples/model=demo/run_id=r1/part-00000008-00000009.parquet.tmp-123-abcd" \
        in res.stdout
    assert "note: orphan activations/model=demo/layer=enc/run_id=r1/part-00000008-00000009.parquet" in res.stdout
    assert len(Store(root).activations("demo", "enc")) == 8  # readers never see the orphan


def test_verify_not_a_store_exits_2(tmp_path):
    assert _cli("verify", tmp_path / "missing", real=True).returncode == 2
    (tmp_path / "empty").mkdir()
    res = _cli("verify", tmp_path / "empty")
    assert res.returncode == 2 and "not a store" in res.stderr
    (tmp_path / "file").write_text("x")
    assert _cli("verify", tmp_path / "file").returncode == 2
    assert _cli("info", tmp_path / "empty").returncode == 2
