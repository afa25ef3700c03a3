"""x0 previews through generation: the EDM sampler's per-step D, the EDM and text-to-image adapters, the
writer path (background thread), the CLI flag for every model, and the demo store's multi-step run."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.generate import default_run_id, generate
from pipeline.hooks import resolve_reduce
from pipeline.sampling import edm_sample
from store import Store
from store.verify import verify
from tests.edm_fixtures import TINY_EDM, tiny_edm_adapter

LAYERS = ["midblock"]


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_edm_sample_hands_every_steps_denoised_batch_to_the_callback():
    from pipeline.models.edm import EDMPrecond

    torch.manual_seed(0)
    net = EDMPrecond(**TINY_EDM).eval()
    z = torch.randn(2, 3, 8, 8)
    labels = torch.eye(10)[:2]
    seen = {}
    out = edm_sample(net, z, labels, [80.0, 5.0, 0.5], noise_seeds=[1, 2],
                     on_denoised=lambda i, sigma, d: seen.__setitem__(i, (sigma, d.clone())))
    assert [(i, s) for i, (s, _) in seen.items()] == [(0, 80.0), (1, 5.0), (2, 0.5)]
    torch.testing.assert_close(seen[2][1], out, rtol=0, atol=0)
    assert not torch.allclose(seen[0][1], seen[2][1])
    again = edm_sample(net, z, labels, [80.0, 5.0, 0.5], noise_seeds=[1, 2])  # the callback changes nothing
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_edm_adapter_fills_last_previews_only_when_asked():
    from pipeline.hooks import Recorder

    for on in (False, True):
        adapter = tiny_edm_adapter(x0_previews=on)
        paths = adapter.resolve_layers(LAYERS)
        with Recorder(adapter.root, paths, {"midblock": "mean"}) as rec:
            conds = adapter.conditions(np.arange(3), 0)
            images = adapter.sample([5, 6, 7], conds, rec)
        if not on:
            assert adapter.last_previews is None
            continue
        assert sorted(adapter.last_previews) == [0, 1, 2]
        for k, pv in adapter.last_previews.items():
            assert pv.dtype == np.uint8 and pv.shape == images.shape == (3, 8, 8, 3), k
        np.testing.assert_array_equal(adapter.last_previews[2], images)
        assert not np.array_equal(adapter.last_previews[0], images)


def test_generate_stores_edm_previews_and_the_last_equals_the_image(tmp_path):
    adapter = tiny_edm_adapter(x0_previews=True)
    generate(adapter, tmp_path, 5, LAYERS, seed=3, batch_size=2, progress=False)
    st = Store(tmp_path)
    samples = st.samples(model="tiny")
    assert [list(s) for s in samples["preview_steps"]] == [[0, 1, 2]] * 5
    for sid in samples.sample_id:
        previews = st.previews(sid)
        assert list(previews) == [0, 1, 2]
        np.testing.assert_array_equal(_png(previews[2]), _png(st.image(sid)))
        assert not np.array_equal(_png(previews[0]), _png(previews[2]))
    report = verify(tmp_path)
    assert report.ok and not report.orphans, report.lines()


def test_previews_do_not_change_the_run_so_a_resume_may_turn_them_on(tmp_path):
    off, on = tiny_edm_adapter(), tiny_edm_adapter(x0_previews=True)
    paths = off.resolve_layers(LAYERS)
    reduce = {name: resolve_reduce("auto", off.layer_shapes()[name]) for name in paths}
    assert default_run_id(off, 3, paths, reduce) == default_run_id(on, 3, paths, reduce)

    first = generate(off, tmp_path, 2, LAYERS, seed=3, batch_size=2, progress=False)
    second = generate(on, tmp_path, 4, LAYERS, seed=3, batch_size=2, progress=False)
    assert first.run_id == second.run_id and second.generated == 2
    st = Store(tmp_path)
    samples = st.samples(model="tiny")
    assert samples["preview_steps"][0] is None and list(samples["preview_steps"][3]) == [0, 1, 2]
    assert st.previews(samples.sample_id[0]) == {}
    assert verify(tmp_path).ok


@pytest.fixture(scope="module")
def t2i_files(tmp_path_factory):
    from tests.t2i_fixtures import tiny_files

    return tiny_files(tmp_path_factory)


def test_generate_stores_t2i_previews(t2i_files, tmp_path):
    from tests.t2i_fixtures import build

    adapter = build(t2i_files, "sdxl-4step", x0_previews=True)
    generate(adapter, tmp_path, 3, ["mid"], seed=1, batch_size=2, progress=False)
    st = Store(tmp_path)
    samples = st.samples(model="sdxl-4step")
    assert [list(s) for s in samples["preview_steps"]] == [[0, 1, 2, 3]] * 3
    for sid in samples.sample_id:
        previews = st.previews(sid)
        assert _png(previews[0]).shape == (16, 16, 3)
        np.testing.assert_array_equal(_png(previews[3]), _png(st.image(sid)))
    assert verify(tmp_path).ok


def test_cli_flag_works_for_the_demo_model(tmp_path, capsys):
    from pipeline.__main__ import main

    code = main(["generate", "--model", "demo", "--num-samples", "2", "--batch-size", "2", "--layers", "midblock",
                 "--store", str(tmp_path), "--x0-previews", "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    st = Store(tmp_path)
    sid = st.samples(model="demo").sample_id[0]
    previews = st.previews(sid)
    assert list(previews) == [0, 1, 2, 3] and all(png[:4] == b"\x89PNG" for png in previews.values())


def test_demo_store_has_previews_for_its_multistep_run_only(tmp_path):
    from pipeline.demo import build_demo_store

    multi, one = build_demo_store(tmp_path, samples_per_class=1, batch_size=10, progress=False)
    st = Store(tmp_path)
    samples = st.samples(model="demo").set_index("run_id")
    assert all(list(s) == [0, 1, 2, 3] for s in samples.loc[multi, "preview_steps"])
    assert samples.loc[one, "preview_steps"].isna().all()
    assert verify(tmp_path).ok
