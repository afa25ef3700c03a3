"""Store round trip: what RunWriter writes, Store reads back (values, shapes, steps, order, filters)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from store_fixtures import LAYERS, SIGMAS, activation_value, batch, manifest, write_run

from store import ManifestMismatch, RunWriter, Store


@pytest.fixture
def store_root(tmp_path):
    write_run(tmp_path, "r1", n=10, batch_size=4)
    write_run(tmp_path, "r2", n=5, batch_size=3)
    return tmp_path


def test_activations_roundtrip_float16(store_root):
    st = Store(store_root)
    for layer, shape in LAYERS.items():
        for step, sigma in enumerate(SIGMAS):
            a = st.activations("demo", layer, step=step)
            assert a.matrix.dtype == np.float32 and a.matrix.shape == (15, int(np.prod(shape)))
            assert a.shape == shape and a.layer_shape == shape and a.reduce == "full"
            assert a.sigma == pytest.approx(sigma) and a.timestep is None
            assert np.all(np.isnan(a.timesteps)) and np.allclose(a.sigmas, sigma)
            expected_ids = [f"r1-{i:08d}" for i in range(10)] + [f"r2-{i:08d}" for i in range(5)]
            assert a.sample_ids.tolist() == expected_ids
            assert a.run_ids.tolist() == ["r1"] * 10 + ["r2"] * 5
            want = np.stack([activation_value(sid[:2], layer, step, int(sid[3:])).reshape(-1)
                             for sid in expected_ids])
            # float16 keeps ~3 significant digits: relative error below 2^-11
            np.testing.assert_allclose(a.matrix, want.astype(np.float16).astype(np.float32), rtol=0, atol=0)
            assert np.max(np.abs(a.matrix - want) / (np.abs(want) + 1e-3)) < 1e-3
    assert st.skipped == []


def test_activation_filters_and_steps(store_root):
    st = Store(store_root)
    a = st.activations("demo", "mid", step=-1, sample_ids=["r2-00000003", "r1-00000001", "nope-00000000"])
    assert a.sample_ids.tolist() == ["r1-00000001", "r2-00000003"] and a.step == 1
    np.testing.assert_allclose(a.matrix[1], activation_value("r2", "mid", 1, 3).reshape(-1), rtol=1e-3, atol=1e-3)
    b = st.activations("demo", "enc", run_ids=["r2"])
    assert b.sample_ids.tolist() == [f"r2-{i:08d}" for i in range(5)]
    assert st.activations("demo", "enc", sample_ids=[]).empty
    with pytest.raises(ValueError, match=r"valid steps: \[0, 1\]"):
        st.activations("demo", "enc", step=5)
    with pytest.raises(ValueError, match=r"unknown layer 'nope'.*\['enc', 'mid'\]"):
        st.activations("demo", "nope")
    assert st.activations("other-model", "enc").empty
    steps = st.steps("demo")
    assert steps["step"].tolist() == [0, 1] and steps["sigma"].tolist() == pytest.approx(SIGMAS)
    assert steps["timestep"].isna().all()


def test_samples_runs_and_metadata(store_root):
    st = Store(store_root)
    assert st.models() == ["demo"]
    assert st.layers("demo") == ["enc", "mid"]
    runs = st.runs()
    assert runs["run_id"].tolist() == ["r1", "r2"]
    assert runs["status"].tolist() == ["complete", "complete"] and runs["num_done"].tolist() == [10, 5]
    assert list(runs.loc[0, "layers"]) == ["enc", "mid"]
    assert json.loads(runs.loc[0, "settings"])["steps"] == 2
    m = st.manifest("r1")
    assert m["reduce"] == {"default": "full"} and m["seed"] == 7 and m["code_version"] == "test"

    df = st.samples()
    assert len(df) == 15 and "thumb" not in df.columns
    assert df["sample_id"].tolist()[:2] == ["r1-00000000", "r1-00000001"]
    assert set(df["model"]) == {"demo"} and df["run_id"].tolist().count("r2") == 5
    row = df.iloc[3]
    assert (row["index"], row["seed"], row["class_id"], row["num_steps"]) == (3, 1003, 0, 2)
    assert (row["width"], row["height"]) == (8, 8)
    assert row["image_path"] == "images/model=demo/run_id=r1/part-00000000-00000003.parquet"  # its batch's part
    sub = st.samples(sample_ids=["r2-00000004", "r1-00000000"], columns=["sample_id", "label", "thumb"])
    assert sub["sample_id"].tolist() == ["r1-00000000", "r2-00000004"]
    assert sub["thumb"].map(lambda b: bytes(b)[:4] == b"RIFF").all()
    with pytest.raises(ValueError, match="unknown sample columns.*valid"):
        st.samples(columns=["nope"])

    img = np.asarray(Image.open(io.BytesIO(st.image("r1-00000003"))))
    np.testing.assert_array_equal(img, batch("r1", [3])[1][0])
    pngs = st.images(["r2-00000004", "zz-00000001", "r1-00000003", "r1-00000009"])
    assert pngs[1] is None and pngs[2] == st.image("r1-00000003")
    for png, (run, i) in zip([pngs[0], pngs[3]], [("r2", 4), ("r1", 9)], strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), batch(run, [i])[1][0])
    thumbs = st.thumbs(["r1-00000003", "zz-00000001"])
    assert thumbs[1] is None and max(Image.open(io.BytesIO(thumbs[0])).size) <= 96

    table = st.samples_arrow(columns=["sample_id", "label"], run_ids=["r2"])
    assert isinstance(table, pa.Table) and table.num_rows == 5 and table.column_names == ["sample_id", "label"]
    assert "thumb" not in st.samples_arrow().column_names


def test_thumbnail_longest_side_96(tmp_path):
    w = RunWriter(tmp_path, manifest("big", layers=["enc"]))
    samples, _, acts = batch("big", [0], layers=["enc"])
    w.write_batch([0], samples, [np.zeros((300, 150, 3), np.uint8)], acts)
    thumb = Image.open(io.BytesIO(Store(tmp_path).thumbs(["big-00000000"])[0]))
    assert thumb.format == "WEBP" and thumb.size == (48, 96)


def test_duckdb_reads_layout_directly(store_root):
    """The documented globs work in plain DuckDB, with partition columns from the folder names."""
    con = duckdb.connect()
    samples = con.sql(f"SELECT model, run_id, count(*) AS n FROM read_parquet('{store_root}/samples/**/*.parquet', "
                      "hive_partitioning=true, hive_types_autocast=false) GROUP BY ALL ORDER BY run_id").df()
    assert samples.to_dict("list") == {"model": ["demo", "demo"], "run_id": ["r1", "r2"], "n": [10, 5]}
    acts = con.sql(f"SELECT layer, step, count(*) AS n, any_value(octet_length(vector)) AS bytes FROM read_parquet("
                   f"'{store_root}/activations/model=demo/layer=*/*/*.parquet', hive_partitioning=true) "
                   "GROUP BY ALL ORDER BY ALL").df()
    assert acts["n"].tolist() == [15, 15, 15, 15]
    assert acts["bytes"].tolist() == [256, 256, 128, 128]  # float16: 2 bytes per value
    runs = con.sql(f"SELECT run_id, status FROM read_parquet('{store_root}/runs/*.parquet') ORDER BY 1").df()
    assert runs["status"].tolist() == ["complete", "complete"]
    # the documented example queries run as written
    doc = (Path(__file__).resolve().parents[1] / "docs" / "store-format.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```sql")[1:]]
    assert len(blocks) >= 3
    for sql in blocks:
        out = con.sql(sql.replace("<store>", str(store_root))).df()
        assert len(out) > 0, sql


def test_cursor_views(store_root):
    st = Store(store_root)
    cur = st.cursor()
    df = cur.sql("SELECT a.sample_id, a.vector, s.label FROM activations a JOIN samples s USING (sample_id) "
                 "WHERE a.layer = 'mid' AND a.step = 1 AND s.run_id = 'r2' ORDER BY s.index").df()
    assert len(df) == 5
    np.testing.assert_allclose(np.asarray(df["vector"][2]), activation_value("r2", "mid", 1, 2).reshape(-1),
                               rtol=1e-3, atol=1e-3)
    assert cur.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    empty = Store(store_root / "nothing").cursor()
    for view in ("samples", "activations", "runs"):
        assert empty.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == 0


def test_empty_or_missing_store_never_raises(tmp_path):
    versions = []
    for st in (Store(tmp_path), Store(tmp_path / "missing")):
        assert st.runs().empty and st.samples().empty and st.models() == [] and st.layers("x") == []
        assert st.steps("x").empty and st.activations("x", "y").empty and st.storage().empty
        assert st.samples_arrow().num_rows == 0 and st.derived.read("projection", "m", "l", "k") is None
        versions.append(st.data_version("x"))
        assert versions[-1] == st.data_version("x")  # a version of nothing: stable, not an error
    write_run(tmp_path, "r1", model="x", n=2, batch_size=2)
    assert Store(tmp_path).data_version("x") != versions[0]  # data makes another one


def test_data_version_changes_on_append(tmp_path):
    w = write_run(tmp_path, "r1", n=4, batch_size=4, finish=False)
    st = Store(tmp_path)
    v1, v1_layer = st.data_version("demo"), st.data_version("demo", "enc")
    assert v1 == st.data_version("demo") and v1 != v1_layer
    w.write_batch([4, 5], *batch("r1", [4, 5]))
    assert st.data_version("demo") != v1 and st.data_version("demo", "enc") != v1_layer
    assert st.data_version("demo", run_ids=["other"]) != st.data_version("demo")
    assert len(st.activations("demo", "enc")) == 6
    # an activation part whose batch is not committed (yet) changes nothing
    v2 = st.data_version("demo", "enc")
    folder = tmp_path / "activations/model=demo/layer=enc/run_id=r1"
    (folder / "part-00000006-00000007.parquet").write_bytes((folder / "part-00000004-00000005.parquet").read_bytes())
    assert st.data_version("demo", "enc") == v2 and len(st.activations("demo", "enc")) == 6


def test_resume_appends_and_counts(tmp_path):
    write_run(tmp_path, "r1", n=4, batch_size=4)
    w = RunWriter(tmp_path, manifest("r1", num_samples=8))
    assert w.done_indices().tolist() == [0, 1, 2, 3]
    assert Store(tmp_path).runs()["status"].tolist() == ["running"]
    with pytest.raises(ValueError, match=r"already committed.*\[3\]"):
        w.write_batch([3, 4], *batch("r1", [3, 4]))
    w.write_batch([4, 5, 6, 7], *batch("r1", [4, 5, 6, 7]))
    row = w.finish()
    assert row["num_done"] == 8 and row["status"] == "complete" and row["num_samples"] == 8
    runs = Store(tmp_path).runs()
    assert runs.loc[0, "created_at"] < runs.loc[0, "updated_at"]


def test_manifest_mismatch_lists_fields(tmp_path):
    write_run(tmp_path, "r1", n=2)
    with pytest.raises(ManifestMismatch) as e:
        RunWriter(tmp_path, manifest("r1", seed=8, settings={"steps": 3}))
    assert e.value.fields == ["settings", "seed"]
    assert "seed: stored 7 != given 8" in str(e.value) and "settings" in str(e.value)
    # settings compare as JSON: key order does not matter, and non-identity fields may change
    RunWriter(tmp_path, manifest("r1", settings={"resolution": 8, "batch_size": 4, "steps": 2},
                                 num_samples=99, device="cuda"))


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="missing .*'seed'.*valid keys"):
        RunWriter(tmp_path, {"run_id": "a", "model": "m", "layers": []})
    with pytest.raises(ValueError, match="invalid run_id"):
        RunWriter(tmp_path, manifest("bad/run"))
    with pytest.raises(ValueError, match="invalid layer"):
        RunWriter(tmp_path, manifest("r", layers=["a b"]))
    w = RunWriter(tmp_path, manifest("r1"))
    samples, images, acts = batch("r1", [0, 1])
    with pytest.raises(ValueError, match="strictly increasing"):
        w.write_batch([1, 0], samples, images, acts)
    with pytest.raises(ValueError, match=r"missing \['mid'\]"):
        w.write_batch([0, 1], samples, images, {"enc": acts["enc"]})
    with pytest.raises(ValueError, match="unknown sample fields.*valid"):
        w.write_batch([0, 1], [dict(s, colour="red") for s in samples], images, acts)
    with pytest.raises(ValueError, match="reduce must be one of"):
        w.write_batch([0, 1], samples, images, {**acts, "enc": [dict(acts["enc"][0], reduce="max")]})
    with pytest.raises(ValueError, match=r"array must be \(batch=2"):
        w.write_batch([0, 1], samples, images, {**acts, "enc": [dict(acts["enc"][0], array=np.zeros((3, 4)))]})
    with pytest.raises(ValueError, match="uint8"):
        w.write_batch([0, 1], samples, [np.zeros((4, 4, 3), np.float32)] * 2, acts)
    written = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert written == ["runs/r1.parquet"]  # bad input leaves nothing behind
    with pytest.raises(ValueError, match="status must be one of"):
        w.finish("done")


def test_float16_overflow_keeps_float32(tmp_path):
    w = RunWriter(tmp_path, manifest("r1", layers=["enc"]))
    samples, images, acts = batch("r1", [0, 1], layers=["enc"], steps=1)
    big = acts["enc"][0]["array"].copy()
    big[0, 0, 0, 0] = 1e6
    w.write_batch([0, 1], samples, images, {"enc": [dict(acts["enc"][0], array=big)]})
    a = Store(tmp_path).activations("demo", "enc")
    assert a.matrix[0, 0] == 1e6
    np.testing.assert_array_equal(a.matrix, big.reshape(2, -1))
    part = next((tmp_path / "activations").rglob("*.parquet"))
    assert pq.read_table(part, columns=["dtype"])["dtype"].to_pylist() == ["float32", "float32"]


def test_images_optional_and_text_embeddings(tmp_path):
    w = RunWriter(tmp_path, manifest("r1", layers=["enc"]))
    samples, _, acts = batch("r1", [0, 1], layers=["enc"])
    w.write_batch([0, 1], [dict(s, width=64, height=32) for s in samples], None, acts)
    w.write_text_embeddings(pd.DataFrame({"prompt_index": [0, 1], "prompt": ["a cat", "a dog"],
                                          "category": ["animal", "animal"],
                                          "embedding": list(np.eye(2, 6, dtype=np.float32))}))
    st = Store(tmp_path)
    df = st.samples(columns=["image_path", "width", "height", "thumb"])
    assert df["image_path"].isna().all() and df["width"].tolist() == [64, 64] and df["thumb"].isna().all()
    frame, emb = st.text_embeddings("demo")
    assert frame["prompt"].tolist() == ["a cat", "a dog"] and frame["run_id"].tolist() == ["r1", "r1"]
    np.testing.assert_array_equal(emb, np.eye(2, 6))


def test_derived_results_live_where_the_store_says(store_root):
    st = Store(store_root)
    frame = pd.DataFrame({"sample_id": ["r1-00000000", "r1-00000001"], "x": [0.5, 1.0], "y": [2.0, -1.0]})
    meta = {"step": 0, "n_neighbors": 15}
    version = st.data_version("demo", "enc")
    path = st.derived.write("projection", "demo", "enc", "umap-abc123", frame, sources={"enc": version},
                            meta=meta)
    assert path == store_root / "caches/projection/model=demo/layer=enc/umap-abc123.parquet"
    table, got_meta = st.derived.read("projection", "demo", "enc", "umap-abc123")
    pd.testing.assert_frame_equal(table.to_pandas(), frame)
    assert got_meta == meta and st.derived.read("projection", "demo", "enc", "missing") is None
    assert st.derived.read("projection", "demo", "other", "umap-abc123") is None  # keyed by layer too
    # a result of several layers has no layer folder; pointers name a key
    assert st.derived.write("compare", "demo", None, "cka-1", pa.table({"i": [1]})) == \
        store_root / "caches/compare/model=demo/cka-1.parquet"
    st.derived.point("lineage", "demo", "enc", "l123", "umap-abc123")
    assert st.derived.target("lineage", "demo", "enc", "l123") == "umap-abc123"
    assert st.derived.target("lineage", "demo", "enc", "nope") is None
    for kind, model, layer, key in (("projection", "demo", "enc", "../evil"), ("nope", "demo", "enc", "k"),
                                    ("projection", "../demo", "enc", "k"), ("projection", "demo", "a/b", "k")):
        with pytest.raises(ValueError, match="invalid|unknown derived kind"):
            st.derived.write(kind, model, layer, key, frame)
    with pytest.raises(ValueError, match="not a pointer kind"):
        st.derived.point("knn", "demo", "enc", "x", "y")
    # the provenance is recorded once, for the staleness scan
    entry = next(e for e in st.derived.scan() if e.key == "umap-abc123")
    assert (entry.kind, entry.model, entry.layer, entry.stale, entry.why) == ("projection", "demo", "enc", False,
                                                                              "current")


def test_data_version_scopes(store_root):
    write_run(store_root, "o1", model="other", n=3, batch_size=3)
    st = Store(store_root)
    scopes = {"store": st.data_version(), "samples": st.data_version(scope="samples"),
              "model": st.data_version("demo"), "layer": st.data_version("demo", "enc")}
    assert len(set(scopes.values())) == len(scopes)  # each scope covers different files
    assert st.data_version("demo", "enc") == st.data_version("demo", "enc", scope="layer")
    assert st.data_version("demo", "enc", run_ids=["r1"]) != st.data_version("demo", "enc", run_ids=["r2"])
    with pytest.raises(ValueError, match="unknown data scope"):
        st.data_version(scope="everything")
    with pytest.raises(ValueError, match="needs a model"):
        st.data_version(scope="model")
    # a batch of another model changes the store and samples versions, not this model's
    write_run(store_root, "o2", model="other", n=2, batch_size=2)
    assert st.data_version() != scopes["store"] and st.data_version(scope="samples") != scopes["samples"]
    assert st.data_version("demo") == scopes["model"] and st.data_version("demo", "enc") == scopes["layer"]
    # a rewritten manifest changes only the whole-store version
    now = st.data_version()
    manifest = next((store_root / "runs").glob("*.parquet"))
    os.utime(manifest, ns=(manifest.stat().st_atime_ns, manifest.stat().st_mtime_ns + 1_000_000))
    assert st.data_version() != now and st.data_version("demo", "enc") == scopes["layer"]
    # the model scope covers its prompts file (prompt clusters depend on it)
    emb = store_root / "text_embeddings/model=demo/run_id=r1/prompts.parquet"
    emb.parent.mkdir(parents=True)
    emb.write_bytes(b"x")
    assert st.data_version("demo") != scopes["model"] and st.data_version("demo", "enc") == scopes["layer"]


def test_storage_report(store_root):
    st = Store(store_root)
    by_layer = st.storage("layer")
    assert by_layer[["layer", "runs", "files", "rows"]].to_dict("list") == {
        "layer": ["enc", "mid"], "runs": [2, 2], "files": [5, 5], "rows": [30, 30]}
    assert (by_layer["bytes"] > 0).all()
    assert set(st.storage("run")["kind"]) == {"samples", "activations", "images"}
    assert "runs" in set(st.storage("kind")["kind"])
    with pytest.raises(ValueError, match="by must be one of"):
        st.storage("model")


def test_vectors_of_different_sizes_need_run_ids(tmp_path):
    write_run(tmp_path, "r1", n=2)
    w = RunWriter(tmp_path, manifest("r2", layers=["enc"]))
    samples, images, acts = batch("r2", [0], layers=["enc"])
    acts["enc"] = [dict(e, array=e["array"][:, :4]) for e in acts["enc"]]  # fewer channels
    w.write_batch([0], samples, images, acts)
    st = Store(tmp_path)
    with pytest.raises(ValueError, match="different sizes.*pass run_ids"):
        st.activations("demo", "enc")
    assert st.activations("demo", "enc", run_ids=["r2"]).matrix.shape == (1, 64)


def test_two_ranks_interleaved_indices_read_in_index_order(tmp_path):
    m = manifest("r1", num_samples=8)
    w0 = RunWriter(tmp_path, m, rank=0, world_size=2)
    w1 = RunWriter(tmp_path, m, rank=1, world_size=2)
    w0.cleanup()
    for w, idx in ((w1, [5, 7]), (w0, [0, 2, 4]), (w1, [1, 3]), (w0, [6])):
        w.write_batch(idx, *batch("r1", idx))
    assert w1.finish() is None  # only rank 0 writes the manifest
    assert w0.finish()["num_done"] == 8
    st = Store(tmp_path)
    a = st.activations("demo", "mid", step=1)
    assert a.sample_ids.tolist() == [f"r1-{i:08d}" for i in range(8)]
    want = np.stack([activation_value("r1", "mid", 1, i).reshape(-1) for i in range(8)])
    np.testing.assert_allclose(a.matrix, want, rtol=1e-3, atol=1e-3)
    assert st.samples()["index"].tolist() == list(range(8))
    assert RunWriter(tmp_path, m).done_indices().tolist() == list(range(8))


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    write_run(tmp_path, "r1", n=2)
    (tmp_path / "runs/r1.parquet").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"manifest .*r1\.parquet is unreadable.*store verify"):
        RunWriter(tmp_path, manifest("r1"))
    with pytest.warns(RuntimeWarning, match="r1.parquet"):
        assert Store(tmp_path).runs().empty
