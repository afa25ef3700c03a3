"""Per-step x0 previews in the store: rows of the batch's images part, the samples' `preview_steps`,
`Store.previews`, `verify` (clean, missing, orphan, foreign) and the writer's orphan cleanup on resume; and
format 1 stores (one PNG file per image and preview), which stay readable, verifiable and resumable."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

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


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_round_trip_rows_columns_and_verify_clean(tmp_path):
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
    for k in (0, 1):
        np.testing.assert_array_equal(decode(got[k]), preview(1, k))
        assert st.image("r1-00000001", step=k) == got[k]
    assert st.image("r1-00000001", step=5) is None
    np.testing.assert_array_equal(decode(st.image("r1-00000001")), image(1))
    assert st.previews("r1-00000004") == {} and st.image("r1-00000004", step=0) is None
    assert st.previews("r1-00000099") == {} and st.previews("not-a-sample") == {}
    # one part per batch, rows (index, step) with the final image first; 8-px images: one row group
    part = pq.ParquetFile(tmp_path / df["image_path"][1])
    assert part.metadata.num_row_groups == 1
    rows = part.read(columns=["index", "step"]).to_pylist()
    assert [(r["index"], r["step"]) for r in rows[:3]] == [(0, None), (0, 0), (0, 1)]
    cur = st.cursor()
    assert cur.execute("SELECT count(*) FROM samples WHERE len(preview_steps) = 2").fetchone()[0] == 3

    report = verify(tmp_path)
    assert report.ok, report.lines()
    assert not report.orphans and not report.foreign and not report.missing_previews


def test_large_images_get_a_row_group_per_sample_and_are_read_one_group_at_a_time(tmp_path, monkeypatch):
    import store.writer

    monkeypatch.setattr(store.writer, "IMAGE_ROW_GROUP_BYTES", 1)  # every sample "large"
    w = RunWriter(tmp_path, manifest())
    w.write_batch([0, 1, 2, 3], *batch("r1", [0, 1, 2, 3]), previews=previews_of([0, 1, 2, 3]))
    part = tmp_path / layout.image_part_relpath("demo", "r1", layout.part_name(0, 3))
    md = pq.read_metadata(part)
    assert md.num_row_groups == 4 and all(md.row_group(g).num_rows == 3 for g in range(4))
    read = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: read.append(list(groups)) or real(self, groups, **kw))
    st = Store(tmp_path)
    np.testing.assert_array_equal(decode(st.image("r1-00000002")), image(2))
    assert [decode(p)[0, 0, 2] for p in st.previews("r1-00000003").values()] == [40, 80]
    assert read == [[2], [3]]


def drop_image_rows(root, part_relpath: str, keep) -> None:
    """Rewrite an images part without the rows `keep(sample_id, step)` rejects (a damaged store)."""
    path = root / part_relpath
    t = pq.read_table(path)
    mask = [bool(keep(s, k)) for s, k in zip(t["sample_id"].to_pylist(), t["step"].to_pylist(), strict=True)]
    pq.write_table(t.filter(pa.array(mask)), path)


def test_verify_reports_a_missing_preview_and_a_missing_image(tmp_path):
    w = RunWriter(tmp_path, manifest())
    w.write_batch([0, 1], *batch("r1", [0, 1]), previews=previews_of([0, 1]))
    w.finish()
    part = layout.image_part_relpath("demo", "r1", layout.part_name(0, 1))
    drop_image_rows(tmp_path, part, lambda s, k: (s, k) not in {("r1-00000001", 1), ("r1-00000000", None)})
    report = verify(tmp_path)
    assert not report.ok
    assert report.missing_previews == [(part, "r1-00000001", 1)]
    assert report.missing_images == [(part, "r1-00000000")]
    assert any("MISSING" in line and "x0 preview of r1-00000001, step 1" in line for line in report.lines())
    assert "1 missing images, 1 missing previews" in report.lines()[-1]
    assert Store(tmp_path).image("r1-00000000") is None and list(Store(tmp_path).previews("r1-00000001")) == [0]


def test_verify_reports_an_undecodable_png(tmp_path):
    w = RunWriter(tmp_path, manifest())
    w.write_batch([0, 1], *batch("r1", [0, 1]))
    part = tmp_path / layout.image_part_relpath("demo", "r1", layout.part_name(0, 1))
    t = pq.read_table(part)
    pq.write_table(t.set_column(3, "png", pa.array([t["png"][0].as_py(), b"\x89PNG not really"])), part)
    report = verify(tmp_path)
    assert len(report.corrupt) == 1 and not report.ok
    rel, why = report.corrupt[0]
    assert rel == part.relative_to(tmp_path).as_posix() and why.startswith("image of r1-00000001: unreadable PNG")
    assert verify(tmp_path, quick=True).ok  # quick reads footers only


def test_orphan_image_parts_are_notes_and_removed_on_resume(tmp_path):
    w = RunWriter(tmp_path, manifest())
    w.write_batch([0, 1], *batch("r1", [0, 1]), previews=previews_of([0, 1]))
    w.write_batch([2, 3], *batch("r1", [2, 3]), previews=previews_of([2, 3]))
    folder = layout.images_dir(tmp_path, "demo", "r1")
    # the second batch killed before its samples part
    (layout.samples_dir(tmp_path, "demo", "r1") / layout.part_name(2, 3)).unlink()
    (folder / (layout.part_name(0, 1) + ".tmp-1-abcd")).write_bytes(b"half")
    (folder / "00000000.preview.png").write_bytes(b"x")

    report = verify(tmp_path)
    name = layout.part_name(2, 3)
    assert sorted(report.orphans) == [f"activations/model=demo/layer={layer}/run_id=r1/{name}"
                                      for layer in ("enc", "mid")] + [layout.image_part_relpath("demo", "r1", name)]
    assert len(report.staging) == 1 and report.foreign == ["images/model=demo/run_id=r1/00000000.preview.png"]
    (folder / "00000000.preview.png").unlink()
    assert verify(tmp_path).ok
    assert Store(tmp_path).image("r1-00000002") is None  # not committed: not visible

    w2 = RunWriter(tmp_path, manifest())  # reopening cleans up
    assert sorted(p.name for p in folder.iterdir()) == [layout.part_name(0, 1)]
    w2.write_batch([2, 3], *batch("r1", [2, 3]), previews=previews_of([2, 3], steps=(1,)))
    w2.finish()
    assert list(Store(tmp_path).previews("r1-00000003")) == [1]
    report = verify(tmp_path)
    assert report.ok and not report.orphans, report.lines()


def to_format1(root, model: str = "demo", run: str = "r1") -> None:
    """Turn a run into its format 1 layout: a PNG file per image and preview, `image_path` naming the file."""
    folder = layout.images_dir(root, model, run)
    for part in layout.list_parts(folder):
        t = pq.read_table(part)
        for i, k, png in zip(*(t[c].to_pylist() for c in ("index", "step", "png")), strict=True):
            (folder / (layout.image_name(i) if k is None else layout.preview_name(i, k))).write_bytes(png)
        part.unlink()
    for part in layout.list_parts(layout.samples_dir(root, model, run)):
        t = pq.read_table(part)
        paths = [layout.image_relpath(model, run, i) for i in t["index"].to_pylist()]
        pq.write_table(t.set_column(t.column_names.index("image_path"), "image_path", pa.array(paths)), part)


def test_format1_stores_stay_readable_verifiable_and_resumable(tmp_path):
    w = RunWriter(tmp_path, manifest())
    w.write_batch([0, 1], *batch("r1", [0, 1]), previews=previews_of([0, 1]))
    w.finish()
    to_format1(tmp_path)
    folder = layout.images_dir(tmp_path, "demo", "r1")
    st = Store(tmp_path)
    np.testing.assert_array_equal(decode(st.image("r1-00000001")), image(1))
    assert [decode(p)[0, 0, 2] for p in st.previews("r1-00000001").values()] == [40, 80]
    assert st.images(["r1-00000000", "r1-00000005"])[1] is None
    assert verify(tmp_path).ok

    # a format 1 batch killed before its samples part, and a stray preview step of a committed sample
    for name in (layout.image_name(2), layout.preview_name(2, 0), layout.preview_name(0, 5)):
        (folder / name).write_bytes((folder / layout.image_name(0)).read_bytes())
    assert sorted(verify(tmp_path).orphans) == sorted(
        f"images/model=demo/run_id=r1/{n}" for n in ("00000002.png", "00000002.step0.png", "00000000.step5.png"))
    (folder / layout.preview_name(1, 1)).unlink()
    report = verify(tmp_path)
    assert report.missing_previews == [(layout.preview_relpath("demo", "r1", 1, 1), "r1-00000001", 1)]
    (folder / layout.preview_name(1, 1)).write_bytes(st.image("r1-00000001", step=0))

    w2 = RunWriter(tmp_path, manifest())  # resuming removes the orphans and appends format 2 batches
    w2.write_batch([2, 3], *batch("r1", [2, 3]), previews=previews_of([2, 3]))
    w2.finish()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [layout.image_name(i) for i in (0, 1)] + [layout.preview_name(i, k) for i in (0, 1) for k in (0, 1)]
        + [layout.part_name(2, 3)])
    st = Store(tmp_path)
    pngs = st.images([f"r1-{i:08d}" for i in range(4)])
    for i, png in enumerate(pngs):
        np.testing.assert_array_equal(decode(png), image(i))
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
