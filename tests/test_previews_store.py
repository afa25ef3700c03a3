"""Per-step x0 previews in the store: file names, the samples' `preview_steps`, `Store.previews`,
`verify` (clean, missing, orphan, foreign) and the writer's orphan cleanup on resume."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import RunWriter, Store, layout
from store.verify import verify
from tests.store_fixtures import batch, image, manifest


def preview(index: int, step: int, size: int = 8) -> np.ndarray:
    a = image(index, size)
    a[..., 2] = 40 * (step + 1)
    return a


def previews_of(indices, steps=(0, 1)) -> dict[int, list[np.ndarray]]:
    return {k: [preview(i, k) for i in indices] for k in steps}


def test_layout_names_round_trip():
    assert layout.preview_name(7, 3) == "00000007.step3.png"
    assert layout.parse_preview_name("00000007.step3.png") == (7, 3)
    assert layout.parse_preview_name("00000007.step12.png") == (7, 12)
    assert layout.preview_relpath("demo", "r1", 7, 0) == "images/model=demo/run_id=r1/00000007.step0.png"
    for bad in ("00000007.png", "00000007.step.png", "00000007.step03.png", "7.step3.png",
                "00000007.step3.png.tmp-1-ab", "00000007.step99999.png"):
        assert layout.parse_preview_name(bad) is None, bad
    assert layout.parse_image_name("00000007.step3.png") is None
    with pytest.raises(ValueError, match="0..32767"):
        layout.preview_name(1, -1)


def test_round_trip_paths_columns_and_verify_clean(tmp_path):
    w = RunWriter(tmp_path, manifest())
    w.write_batch([0, 1, 2], *batch("r1", [0, 1, 2]), previews=previews_of([0, 1, 2]))
    w.write_batch([3, 4], *batch("r1", [3, 4]))  # a batch without previews
    w.finish()

    st = Store(tmp_path)
    df = st.samples(model="demo")
    assert [list(s) for s in df["preview_steps"][:3]] == [[0, 1]] * 3
    assert df["preview_steps"][3] is None and df["preview_steps"][4] is None
    got = st.previews("r1-00000001")
    assert list(got) == [0, 1]
    assert got[1] == tmp_path / "images/model=demo/run_id=r1/00000001.step1.png"
    assert st.preview_path("r1-00000001", 0) == got[0] and st.preview_path("r1-00000001", 5) is None
    assert st.previews("r1-00000004") == {} and st.preview_path("r1-00000004", 0) is None
    assert st.previews("r1-00000099") == {} and st.previews("not-a-sample") == {}
    from PIL import Image

    for k in (0, 1):
        np.testing.assert_array_equal(np.asarray(Image.open(got[k]).convert("RGB")), preview(1, k))
    cur = st.cursor()
    assert cur.execute("SELECT count(*) FROM samples WHERE len(preview_steps) = 2").fetchone()[0] == 3

    report = verify(tmp_path)
    assert report.ok, report.lines()
    assert not report.orphans and not report.foreign and not report.missing_previews


def test_verify_reports_a_missing_preview(tmp_path):
    w = RunWriter(tmp_path, manifest())
    w.write_batch([0, 1], *batch("r1", [0, 1]), previews=previews_of([0, 1]))
    w.finish()
    gone = tmp_path / layout.preview_relpath("demo", "r1", 1, 1)
    gone.unlink()
    report = verify(tmp_path)
    assert not report.ok
    assert report.missing_previews == [(layout.preview_relpath("demo", "r1", 1, 1), "r1-00000001", 1)]
    assert any("MISSING" in line and "x0 preview of r1-00000001, step 1" in line for line in report.lines())
    assert "1 missing previews" in report.lines()[-1]


def test_orphan_previews_are_notes_and_removed_on_resume(tmp_path):
    w = RunWriter(tmp_path, manifest())
    w.write_batch([0, 1], *batch("r1", [0, 1]), previews=previews_of([0, 1]))
    folder = layout.images_dir(tmp_path, "demo", "r1")
    # a batch killed before its samples part, and a stray step of a committed sample
    for i in (2, 3):
        for k in (0, 1):
            (folder / layout.preview_name(i, k)).write_bytes((folder / layout.preview_name(0, k)).read_bytes())
    (folder / layout.preview_name(0, 5)).write_bytes((folder / layout.preview_name(0, 0)).read_bytes())
    (folder / "00000000.step1.png.tmp-1-abcd").write_bytes(b"half")
    (folder / "00000000.preview.png").write_bytes(b"x")

    report = verify(tmp_path)
    assert sorted(report.orphans) == sorted(
        layout.preview_relpath("demo", "r1", i, k) for i, k in ((2, 0), (2, 1), (3, 0), (3, 1), (0, 5)))
    assert report.foreign == ["images/model=demo/run_id=r1/00000000.preview.png"]
    (folder / "00000000.preview.png").unlink()
    assert verify(tmp_path).ok

    w2 = RunWriter(tmp_path, manifest())  # reopening cleans up
    assert sorted(p.name for p in folder.iterdir()) == [
        "00000000.png", "00000000.step0.png", "00000000.step1.png",
        "00000001.png", "00000001.step0.png", "00000001.step1.png"]
    w2.write_batch([2, 3], *batch("r1", [2, 3]), previews=previews_of([2, 3], steps=(1,)))
    w2.finish()
    assert Store(tmp_path).previews("r1-00000003") == {1: folder / "00000003.step1.png"}
    report = verify(tmp_path)
    assert report.ok and not report.orphans, report.lines()


def test_bad_previews_leave_no_file(tmp_path):
    w = RunWriter(tmp_path, manifest())
    s, im, acts = batch("r1", [0, 1])
    with pytest.raises(ValueError, match="need 2 images"):
        w.write_batch([0, 1], s, im, acts, previews={0: [preview(0, 0)]})
    with pytest.raises(ValueError, match="uint8"):
        w.write_batch([0, 1], s, im, acts, previews={0: [np.zeros((8, 8, 3), np.float32)] * 2})
    with pytest.raises(ValueError, match="integers"):
        w.write_batch([0, 1], s, im, acts, previews={"0": [preview(0, 0)] * 2})
    with pytest.raises(ValueError, match="0..32767"):
        w.write_batch([0, 1], s, im, acts, previews={-1: [preview(0, 0)] * 2})
    assert not layout.images_dir(tmp_path, "demo", "r1").exists()
    # one (B, H, W, 3) array per step works like a list
    w.write_batch([0, 1], s, im, acts, previews={2: np.stack([preview(0, 2), preview(1, 2)])})
    assert list(Store(tmp_path).previews("r1-00000001")) == [2]


def test_parts_without_the_column_read_as_no_previews(tmp_path):
    """A store written before previews existed: no `preview_steps` in its samples parts."""
    w = RunWriter(tmp_path, manifest())
    w.write_batch([0, 1], *batch("r1", [0, 1]))
    w.finish()
    part = layout.list_parts(layout.samples_dir(tmp_path, "demo", "r1"))[0]
    t = pq.read_table(part)
    pq.write_table(t.drop_columns(["preview_steps"]), part)
    st = Store(tmp_path)
    df = st.samples(model="demo")
    assert "preview_steps" in df.columns and df["preview_steps"].isna().all()
    assert st.previews("r1-00000000") == {}
    assert st.cursor().execute("SELECT count(preview_steps) FROM samples").fetchone()[0] == 0
    assert verify(tmp_path).ok

    # an old part beside a new one with previews: the old rows read as null
    w = RunWriter(tmp_path, manifest())
    w.write_batch([2], *batch("r1", [2]), previews=previews_of([2]))
    df = Store(tmp_path).samples(model="demo", columns=["sample_id", "preview_steps"])
    assert df["preview_steps"][0] is None and list(df["preview_steps"][2]) == [0, 1]
    assert pq.read_schema(layout.list_parts(layout.samples_dir(tmp_path, "demo", "r1"))[-1]).field(
        "preview_steps").type == pa.list_(pa.int16())
