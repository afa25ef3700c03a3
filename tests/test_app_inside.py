"""AppTest: the Inside page (feature maps over the images of the selected sample and its neighbours, a clicked
location's correspondence, channel histogram and top channels) on a small demo store."""

from __future__ import annotations

import pytest

from tests import app_fixtures as fx
from tests import store_fixtures as sf

app_store = fx.app_store
app_env = fx.app_env

INSIDE = "app_pages/inside.py"
RUN = sf.DEMO_RUN


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    return sf.build_demo_store(tmp_path_factory.mktemp("inside-app") / "store")


@pytest.fixture
def demo_env(demo_store, monkeypatch, tmp_path):
    with fx.app_pointed_at(demo_store, monkeypatch, tmp_path) as fake:
        yield fake


def _open_inside(query: dict):
    at = fx.open_page(INSIDE, query, timeout=120)
    assert not at.exception, at.exception
    return at


def _captions(at) -> list[str]:
    out = []
    for el in at.get("image"):
        for img in el.proto.imgs:
            out.append(img.caption)
    return out


def sid(i: int) -> str:
    return f"{RUN}-{i:08d}"


def test_stored_maps_of_the_selection_and_its_neighbours(demo_env):
    at = _open_inside({"sel": sid(4), "layer": "midblock", "k": "3"})
    text = fx.page_text(at)
    assert "64 channels at 4×4" in text and "read from the store" in text
    caps = _captions(at)
    assert caps.count("channel norm") == 4 and caps.count("PCA colours") == 4 and caps.count("image") == 4
    # the selected sample's own vector at the clicked location: similarity 1 there
    sims = [c for c in caps if c.startswith("similarity")]
    assert len(sims) == 4 and sims[0] == "similarity · max 1.00"
    assert sum(c.startswith("#") for c in caps) == 6  # the top channels
    assert at.query_params["sel"] in ([sid(4)], sid(4))


def test_a_location_chosen_lands_in_the_url_and_moves_the_marker(demo_env):
    at = _open_inside({"sel": sid(4), "layer": "midblock", "k": "2"})
    at.number_input(key="ins_row").set_value(0).run()
    at.number_input(key="ins_col").set_value(3).run()
    assert not at.exception
    assert "row 0, column 3" in fx.page_text(at)
    at_param = at.query_params["at"]
    assert (at_param[0] if isinstance(at_param, list) else at_param) == "0,3"


def test_a_layer_kept_as_means_is_recomputed_and_said_so(demo_env):
    at = _open_inside({"sel": sid(7), "layer": "encoder_bottleneck", "k": "1"})
    assert "recomputed from the seeds for 2 of 2" in fx.page_text(at)
    assert _captions(at).count("PCA colours") == 2


def test_no_selection_offers_a_picker(demo_env):
    at = _open_inside({})
    assert "Select a sample on **Explore**" in fx.page_text(at)


def test_a_sample_that_cannot_be_recomputed_is_a_clear_error(app_env):
    at = _open_inside({"sel": "digits-a-00000001", "layer": "midblock", "k": "1"})
    assert at.error and "cannot recompute" in at.error[0].value


def test_text_to_image_maps_over_the_decoded_image(tmp_path_factory, monkeypatch, tmp_path):
    """The tiny SD v1.5 model: latent-resolution maps laid over the decoded 16-px images."""
    import torch

    from pipeline.generate import generate
    from tests.t2i_fixtures import build, tiny_files

    torch.set_num_threads(1)
    files = tiny_files(tmp_path_factory)
    root = tmp_path_factory.mktemp("inside-t2i") / "store"
    generate(build(files, "sd15", seeds_per_prompt=2), root, 8, ["mid"], run_id="sd", batch_size=8,
             progress=False, reduce={"mid": "full"})
    with fx.app_pointed_at(root, monkeypatch, tmp_path):
        at = _open_inside({"sel": "sd-00000001", "layer": "mid", "k": "2"})
        text = fx.page_text(at)
        assert "read from the store" in text and "laid over the 3 images" in text
        assert _captions(at).count("PCA colours") == 3
        assert [c for c in _captions(at) if c.startswith("similarity")][0] == "similarity · max 1.00"
