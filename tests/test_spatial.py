"""pipeline.spatial: the measures on constructed maps with known answers, and maps fetched from a demo store
(stored full, or recomputed from the seed when the store keeps less)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import spatial
from pipeline.spatial import (
    SpatialError,
    channel_norm,
    channel_summary,
    correspondence,
    fit_pca3,
    load_maps,
    location_at,
    location_vector,
    overlay,
    pca_colours,
    spatial_view,
    upsample,
)
from tests import store_fixtures as sf


def test_channel_norm_is_the_l2_norm_over_channels():
    fmap = np.zeros((2, 2, 3), np.float32)
    fmap[0, 1, 2], fmap[1, 1, 2] = 3, 4
    fmap[1, 0, 0] = -2
    expected = np.zeros((2, 3))
    expected[1, 2], expected[0, 0] = 5, 2
    np.testing.assert_allclose(channel_norm(fmap), expected)


def test_correspondence_is_one_where_the_clicked_vector_is_and_follows_the_angle():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 5, 5)).astype(np.float32)
    q = location_vector(a, 2, 3)
    b = rng.normal(size=(8, 3, 4)).astype(np.float32)  # another sample, another resolution
    b[:, 1, 1] = 2.5 * q  # the same direction, longer
    b[:, 0, 2] = -q  # the opposite direction
    b[:, 2, 0] = 0  # no features at all
    sim = correspondence(q, b)
    assert sim.shape == (3, 4)
    assert sim[1, 1] == pytest.approx(1.0, abs=1e-6) and sim[0, 2] == pytest.approx(-1.0, abs=1e-6)
    assert sim[2, 0] == 0
    assert correspondence(q, a)[2, 3] == pytest.approx(1.0, abs=1e-6)
    orth = np.zeros((2, 1, 2), np.float32)
    orth[:, 0, 0], orth[:, 0, 1] = (1, 0), (1, 1)
    np.testing.assert_allclose(correspondence(np.array([0, 1.0]), orth)[0], [0, np.sqrt(0.5)], atol=1e-6)
    with pytest.raises(SpatialError, match="channels"):
        correspondence(np.ones(3), a)


def test_pca_is_fitted_once_so_one_colour_means_one_direction_in_every_map():
    # two maps mixing three directions; the same feature vector gets the same colour in both
    dirs = np.eye(6, dtype=np.float32)[:3] * np.array([[5.0], [3.0], [1.0]])
    rng = np.random.default_rng(1)
    maps = []
    for _ in range(2):
        w = rng.normal(size=(3, 16, 16))
        maps.append(np.einsum("khw,kc->chw", w, dirs).astype(np.float32))
    maps[1][:, 0, 0] = maps[0][:, 3, 3]  # one shared vector
    pca = fit_pca3(maps)
    assert pca.explained.sum() == pytest.approx(1.0, abs=1e-5)
    assert pca.explained[0] > pca.explained[1] > pca.explained[2]
    assert abs(pca.components[0] @ np.eye(6)[0]) > 0.98  # the strongest direction first
    c0, c1 = pca_colours(maps[0], pca), pca_colours(maps[1], pca)
    assert c0.shape == (16, 16, 3) and c0.min() >= 0 and c1.max() <= 1
    np.testing.assert_allclose(c1[0, 0], c0[3, 3], atol=1e-6)
    with pytest.raises(SpatialError, match="different channel counts"):
        fit_pca3([maps[0], np.ones((5, 2, 2))])


def test_channel_summary_histogram_and_top_channels():
    fmap = np.zeros((5, 2, 2), np.float32)
    fmap[3] = -4.0  # strongest by magnitude, negative
    fmap[1] = [[2, 0], [0, 2]]  # magnitude 1
    fmap[4] = 0.5
    out = channel_summary(fmap, top=3, bins=4)
    assert out["counts"].sum() == 5
    np.testing.assert_allclose(out["means"], [0, 1, 0, -4, 0.5])
    assert [t["channel"] for t in out["top"]] == [3, 1, 4]
    assert out["top"][0]["magnitude"] == pytest.approx(4.0)
    np.testing.assert_array_equal(out["top"][1]["map"], fmap[1])


def test_upsampling_covers_the_image_and_locations_map_back():
    grid = np.array([[0.0, 1.0], [2.0, 3.0]])
    near = upsample(grid, (4, 6), "nearest")
    assert near.shape == (4, 6) and near[0, 0] == 0 and near[0, 5] == 1 and near[3, 0] == 2 and near[3, 5] == 3
    smooth = upsample(grid, (4, 4), "bilinear")
    assert smooth[0, 0] == 0 and smooth[3, 3] == 3 and 0 < smooth[1, 1] < smooth[2, 2] < 3
    assert location_at(0, 0, (32, 32), (4, 4)) == (0, 0)
    assert location_at(31.9, 9, (32, 32), (4, 4)) == (1, 3)
    with pytest.raises(SpatialError, match="outside"):
        location_at(40, 0, (32, 32), (4, 4))
    with pytest.raises(SpatialError, match="upsampling"):
        upsample(grid, (4, 4), "cubic")


def test_overlay_blends_with_opacity():
    img = np.full((4, 4, 3), 200, np.uint8)
    red = np.zeros((2, 2, 3), np.float32)
    red[..., 0] = 1
    assert (overlay(img, red, 0.0) == img).all()
    full = overlay(img, red, 1.0)
    assert (full[..., 0] == 255).all() and (full[..., 1] == 0).all()
    half = overlay(img, red, 0.5)
    assert half[0, 0, 0] == 228 and half[0, 0, 1] == 100
    with pytest.raises(SpatialError, match="opacity"):
        overlay(img, red, 2)


# -- on the demo model --------------------------------------------------------------------------------------

RUN = sf.DEMO_RUN


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from store import Store

    return Store(sf.build_demo_store(tmp_path_factory.mktemp("spatial") / "store"))


def ids(n):
    return [f"{RUN}-{i:08d}" for i in range(n)]


def test_stored_full_maps_are_read_and_recomputed_ones_match_the_store(demo):
    fm = load_maps(demo, ids(4), "midblock", step=1)
    assert set(fm.source.values()) == {"stored"} and not fm.notes and fm.step == 1
    assert fm.maps[0].shape == (64, 4, 4)
    # the same maps recomputed from the seeds equal the stored float16 ones
    again = spatial._recompute(demo, ids(4), "midblock", 1, None, None, lambda m: None)
    for sid, fmap in zip(ids(4), fm.maps, strict=True):
        np.testing.assert_allclose(again[sid], fmap, rtol=2e-3, atol=2e-3)
    # a layer kept as channel means is recomputed, said so, and its means are the stored ones
    said = []
    means = load_maps(demo, ids(3), "encoder_bottleneck", step=-1, progress=said.append)
    assert set(means.source.values()) == {"recomputed"} and means.notes and "recomputed" in said[0]
    stored = demo.activations(means.model, "encoder_bottleneck", -1, sample_ids=ids(3))
    np.testing.assert_allclose(np.stack([m.mean(axis=(1, 2)) for m in means.maps]), stored.matrix, rtol=2e-3,
                               atol=2e-3)
    with pytest.raises(SpatialError, match="recomputing is off"):
        load_maps(demo, [ids(5)[4]], "encoder_bottleneck", recompute=False)


def test_spatial_view_of_a_selection_and_its_correspondence(demo):
    view = spatial_view(demo, ids(5), "midblock")
    assert len(view.norms) == len(view.colours) == 5 and view.colours[0].shape == (4, 4, 3)
    lo, hi = view.norm_range
    assert lo <= min(n.min() for n in view.norms) and hi >= max(n.max() for n in view.norms)
    sims = view.correspondences(1, 2)
    assert sims[0][1, 2] == pytest.approx(1.0, abs=1e-5)  # the clicked location of the selected sample itself
    assert all(s.shape == (4, 4) and (s <= 1).all() for s in sims)
    assert len(view.summary["top"]) == 6 and view.summary["counts"].sum() == 64


def test_bad_requests_are_clear_errors(demo):
    with pytest.raises(SpatialError, match="unknown sample"):
        load_maps(demo, ["nope-00000001"], "midblock")
    with pytest.raises(SpatialError, match="unknown layer"):
        load_maps(demo, ids(1), "nope")
    with pytest.raises(SpatialError, match="step 9"):
        load_maps(demo, ids(1), "midblock", step=9)
    with pytest.raises(SpatialError, match="no samples"):
        load_maps(demo, [], "midblock")


def test_text_to_image_maps_at_latent_resolution_over_the_decoded_image(tmp_path_factory):
    """The tiny SD v1.5 model: a layer stored full is read, one kept as means is recomputed through the run's
    generator, and both lay over the 16-px decoded image."""
    import io

    import torch
    from PIL import Image

    from pipeline.generate import generate
    from store import Store
    from tests.t2i_fixtures import build, tiny_files

    torch.set_num_threads(1)
    files = tiny_files(tmp_path_factory)
    root = tmp_path_factory.mktemp("spatial-t2i") / "store"
    generate(build(files, "sd15", seeds_per_prompt=1), root, 4, ["mid", "down1"], run_id="sd", batch_size=4,
             progress=False, reduce={"mid": "full", "down1": "mean"})
    store = Store(root)
    sids = [f"sd-{i:08d}" for i in range(3)]
    view = spatial_view(store, sids, "mid")
    assert set(view.maps.source.values()) == {"stored"}
    c, h, w = view.maps.maps[0].shape
    assert h < 16 and w < 16  # latent resolution, below the image's
    image = np.asarray(Image.open(io.BytesIO(store.image(sids[0]))))
    drawn = overlay(image, view.colours[0], 0.5, "bilinear")
    assert drawn.shape[:2] == image.shape[:2]
    recomputed = load_maps(store, sids, "down1")
    assert set(recomputed.source.values()) == {"recomputed"}
    stored = store.activations(recomputed.model, "down1", -1, sample_ids=sids)
    np.testing.assert_allclose(np.stack([m.mean(axis=(1, 2)) for m in recomputed.maps]), stored.matrix,
                               rtol=5e-3, atol=5e-3)
