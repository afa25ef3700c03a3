"""Encoded runs: a run's final images through the network at one noise level (`encode-real --images run:<id>`),
so that a 1-step generator's outputs are compared with real images where both are images at that noise level
(a 1-step run records only the call on pure noise, where every manifold metric against real images is 0).

The source (errors for an unknown run, a run of another image size, a run without images, an encoded run), the
encoded run (kind, seeds and labels of the source, `source_sample_id`, the images exactly, the noise formula,
run ids), the command line, links to the generated samples, and the story the demo store tells with them: the
DMD2-distilled student covers the real digits, the naive 1-step collapses to class means."""

from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.adapters.base import sample_seed, seeded_normal
from pipeline.generate import generate
from pipeline.real import encode_real, encoded_run_id, noise_level
from pipeline.sources import SourceError, open_source
from store import RunWriter, Store
from tests.edm_fixtures import tiny_edm_adapter

LAYERS = ["enc.8x8_conv", "midblock"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """A 3-step run of the tiny 8-px network (12 samples), to encode at its last sigma (0.5, step 2)."""
    root = tmp_path_factory.mktemp("encoded")
    adapter = tiny_edm_adapter()
    generate(adapter, root, 12, LAYERS, seed=3, batch_size=5, run_id="gen", progress=False)
    return root


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# -- the source -----------------------------------------------------------------------------------------------

def test_a_run_source_lists_the_runs_samples_in_index_order_with_seeds_and_labels(tiny_store):
    store = Store(tiny_store)
    src = open_source("run:gen", store=tiny_store)
    assert open_source("gen", kind="run", store=tiny_store).items == src.items  # --source-kind run
    frame = store.samples(run_ids=["gen"])
    assert src.kind == "run" and src.conditioning == "class" and src.generated and not src.problems
    assert [i.sample_id for i in src.items] == frame["sample_id"].tolist() == [f"gen-{k:08d}" for k in range(12)]
    assert [i.seed for i in src.items] == frame["seed"].tolist()
    assert [i.class_id for i in src.items] == frame["class_id"].tolist()
    assert src.identity() == {"kind": "run", "run_id": "gen", "model": "tiny", "checkpoint_sha256": "seed0",
                              "seed": 3}
    # the images exactly as stored, in [-1, 1]
    batch = src.load_many(src.items[:3], 8)
    for item, got in zip(src.items[:3], batch, strict=True):
        assert np.array_equal(np.rint((got.transpose(1, 2, 0) + 1) * 127.5), _pixels(store.image(item.sample_id)))


def test_bad_run_sources_get_one_line_errors(tiny_store, tmp_path):
    with pytest.raises(SourceError, match=r"unknown run 'nope' in .*; its runs: gen"):
        open_source("run:nope", store=tiny_store)
    with pytest.raises(SourceError, match="give the store"):
        open_source("run:gen")
    with pytest.raises(SourceError, match="give the run to encode"):
        open_source("run:", store=tiny_store)
    # a run of another image size does not fit the network: refused before anything is written
    from pipeline.adapters.edm import load_demo

    demo = load_demo(torch.device("cpu"))
    with pytest.raises(SourceError, match=r"run 'gen' \(model tiny\) holds 8x8 px images; demo takes 16x16"):
        encode_real(demo, open_source("run:gen", store=tiny_store), tmp_path / "out", ["midblock"], progress=False)
    assert not (tmp_path / "out").exists()
    # a run without images (written without them), and a run without samples
    manifest = {"run_id": "blind", "model": "tiny", "layers": [], "seed": 0, "settings": {}}
    with RunWriter(tmp_path / "s", manifest) as w:
        w.write_batch([0, 1], [{"seed": 1, "class_id": 0}, {"seed": 2, "class_id": 1}], None, {})
    with RunWriter(tmp_path / "s", {**manifest, "run_id": "empty"}):
        pass
    with pytest.raises(SourceError, match="run 'blind' has no images in .*: nothing to encode"):
        open_source("run:blind", store=tmp_path / "s")
    with pytest.raises(SourceError, match="run 'empty' has no samples"):
        open_source("run:empty", store=tmp_path / "s")


# -- the encoded run ------------------------------------------------------------------------------------------

def test_an_encoded_run_keeps_the_sources_seeds_and_labels_and_names_each_source_sample(tiny_store, tmp_path):
    adapter = tiny_edm_adapter()
    src = open_source("run:gen", store=tiny_store)
    result = encode_real(adapter, src, tiny_store, LAYERS, batch_size=5, reduce="full", progress=False)
    assert result.run_id == "gen-encoded" and result.encoded == 12 and not result.skipped
    store = Store(tiny_store)
    settings = store.manifest("gen-encoded")["settings"]
    assert settings["kind"] == "encoded" and settings["source"]["run_id"] == "gen"
    assert settings["sigma"] == 0.5 and settings["step"] == 2  # the tiny schedule's last step
    assert store.run_kinds()["gen-encoded"] == "encoded"
    gen, enc = store.samples(run_ids=["gen"]), store.samples(run_ids=["gen-encoded"])
    assert enc["source_sample_id"].tolist() == gen["sample_id"].tolist()
    assert set(gen["source_sample_id"].isna()) == {True}  # the generated run: no source
    joined = enc.merge(gen, left_on="source_sample_id", right_on="sample_id", suffixes=("", "_gen"))
    for column in ("seed", "class_id", "label"):
        assert joined[column].tolist() == joined[f"{column}_gen"].tolist()
    assert set(enc["run_kind"]) == {"encoded"} and set(enc["num_steps"]) == {1}
    # the stored image is the generated image, pixel for pixel
    for a, b in zip(store.images(gen["sample_id"]), store.images(enc["sample_id"]), strict=True):
        assert np.array_equal(_pixels(a), _pixels(b))
    # the network saw image + sigma·n, n from the encoding run's seed (0) and the index, not the generator's noise
    acts = store.activations("tiny", "enc.8x8_conv", step=2, run_ids=["gen-encoded"])
    images = np.stack([g for g in src.load_many(src.items, 8)])
    noise = seeded_normal([sample_seed(0, i) for i in range(12)], (3, 8, 8))
    with torch.no_grad():
        want = adapter.net.model.enc["8x8_conv"]((torch.from_numpy(images) + 0.5 * noise) /
                                                 math.sqrt(0.5**2 + 0.5**2)).numpy()
    assert np.allclose(acts.matrix.reshape(want.shape), want, atol=2e-2, rtol=1e-2)
    # the generated run's last step and the encoded run share step 2 (one map), at their own sigmas
    steps = store.steps("tiny", "midblock")
    assert steps.set_index("step").loc[2, "sigma"] == pytest.approx(0.5)


def test_encoded_run_ids_name_the_source_and_a_noise_level_other_than_the_default():
    adapter = tiny_edm_adapter()
    assert encoded_run_id(adapter, "gen", noise_level(adapter)) == "gen-encoded"
    assert encoded_run_id(adapter, "gen", noise_level(adapter, sigma=0.5000001)) == "gen-encoded"
    assert encoded_run_id(adapter, "gen", noise_level(adapter, sigma=5.0)) == "gen-encoded-at-sigma5"
    assert encoded_run_id(adapter, "gen", noise_level(adapter, sigma=0.47)) == "gen-encoded-at-sigma0.47"
    assert encoded_run_id(adapter, "gen", noise_level(adapter), seed=2) == "gen-encoded-s2"
    one = tiny_edm_adapter(sigmas=(80.0,))  # a 1-step model has no default level: always named
    assert encoded_run_id(one, "gen", noise_level(one, sigma=0.5)) == "gen-encoded-at-sigma0.5"


def test_a_real_run_encoded_again_stays_real_and_an_encoded_run_is_not_a_source(tmp_path):
    adapter = tiny_edm_adapter()
    encode_real(adapter, open_source("digits"), tmp_path, ["midblock"], num_samples=6, run_id="digits",
                progress=False)
    again = encode_real(adapter, open_source("run:digits", store=tmp_path), tmp_path, ["midblock"], sigma=5.0,
                        progress=False)
    assert again.run_id == "digits-encoded-at-sigma5"
    assert Store(tmp_path).run_kinds()[again.run_id] == "real"  # its images are real digits
    with pytest.raises(SourceError, match="already an encoded run \\(of 'digits'\\): encode that run instead"):
        open_source(f"run:{again.run_id}", store=tmp_path)


def test_encoded_samples_link_to_the_generated_samples_on_the_compare_runs_page(tiny_store):
    from pipeline.run_pairs import link_groups

    store = Store(tiny_store)
    if "gen-encoded" not in store.run_kinds():
        encode_real(tiny_edm_adapter(), open_source("run:gen", store=tiny_store), tiny_store, LAYERS,
                    batch_size=5, reduce="full", progress=False)
    frame = store.samples(run_ids=["gen", "gen-encoded"])
    groups = link_groups(frame, ["gen", "gen-encoded"], store.run_kinds())
    assert groups == [[f"gen-{k:08d}", f"gen-encoded-{k:08d}"] for k in range(12)]


def test_a_text_to_image_run_is_encoded_with_its_prompts_at_its_models_last_timestep(tmp_path_factory, tmp_path):
    """SD/SDXL: a 1-step run's images through the 4-step model's UNet at its last timestep (step 3), each with
    its own prompt and category; a class model's run is refused by the text model and the other way round."""
    from tests.t2i_fixtures import build, tiny_files

    files = tiny_files(tmp_path_factory)
    one = build(files, "sdxl")  # 1 step
    generate(one, tmp_path, 4, ["mid"], seed=3, batch_size=4, run_id="sdxl1", progress=False)
    four = build(files, "sdxl-4step")
    result = encode_real(four, open_source("run:sdxl1", store=tmp_path), tmp_path, ["mid"], progress=False)
    store = Store(tmp_path)
    assert result.run_id == "sdxl1-encoded" and result.encoded == 4
    gen, enc = store.samples(run_ids=["sdxl1"]), store.samples(run_ids=["sdxl1-encoded"])
    for column in ("seed", "prompt", "category", "label"):
        assert enc[column].tolist() == gen[column].tolist()
    assert enc["source_sample_id"].tolist() == gen["sample_id"].tolist()
    assert store.steps("sdxl-4step", "mid")["step"].tolist() == [3]
    assert store.manifest("sdxl1-encoded")["settings"]["timestep"] == four.timesteps[-1]
    with pytest.raises(SourceError, match="conditioned on a class label"):
        encode_real(tiny_edm_adapter(), open_source("run:sdxl1", store=tmp_path), tmp_path, ["midblock"],
                    progress=False)


# -- the command line -----------------------------------------------------------------------------------------

def test_the_command_encodes_a_run_of_its_store_and_refuses_bad_ones_in_one_line(tmp_path, capsys):
    from pipeline.__main__ import main
    from pipeline.adapters.edm import load_demo

    store = tmp_path / "store"
    generate(load_demo(torch.device("cpu"), steps=1, samples_per_class=1), store, 10, ["midblock"], seed=0,
             batch_size=10, run_id="one", progress=False)
    argv = ["encode-real", "--model", "demo", "--store", str(store), "--layers", "midblock", "--quiet"]
    assert main([*argv, "--images", "run:one"]) == 0
    assert "run one-encoded: encoded 10 images of run:one" in capsys.readouterr().out
    assert main([*argv, "--images", "one", "--source-kind", "run", "--sigma", "0.47"]) == 0
    assert "run one-encoded-at-sigma0.47: encoded 10 images" in capsys.readouterr().out
    s = Store(store)
    assert s.steps("demo", "midblock")["step"].tolist() == [0, 2, 3]  # pure noise; sigma 0.47; sigma 0.002
    assert s.run_kinds() == {"one": "generated", "one-encoded": "encoded", "one-encoded-at-sigma0.47": "encoded"}

    generate(tiny_edm_adapter(), store, 4, ["midblock"], seed=0, batch_size=4, run_id="small", progress=False)
    for bad, message in ((["--images", "run:nope"], "unknown run 'nope'"),
                         (["--images", "run:small"], "holds 8x8 px images; demo takes 16x16"),
                         (["--images", "run:one-encoded"], "already an encoded run")):
        assert main([*argv, *bad]) == 2, bad
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- what the comparison says ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """The demo store at 20 samples per class, with its extra runs (real digits, the student, the encoded runs)."""
    from pipeline.demo import build_demo_store

    root = tmp_path_factory.mktemp("demo-encoded")
    build_demo_store(root, samples_per_class=20, batch_size=100, progress=False, maps=False, extras=True)
    return root


def test_the_demo_student_covers_the_real_digits_and_the_naive_1_step_collapses(demo_store):
    """DMD2's story at the real digits' noise level (step 3, sigma 0.002), in the middle block's space: against
    the real digits, the distilled student's outputs reach much more of the data (recall, coverage) than the
    naive 1-step's blurred class means, and lie nearer it in Fréchet distance. Measured at 20 per class (naive vs
    student): recall 0.00 vs 0.93, coverage 0.31 vs 0.81, FD 11.5 vs 3.7; the full demo store (1,500 each):
    recall 0.00 vs 0.84, coverage 0.12 vs 0.83, FD 8.3 vs 0.73 (the 4-step teacher: 0.04, 0.60, 3.0)."""
    from pipeline.distribution import ALL, compare_runs

    store = Store(demo_store)
    kinds = store.run_kinds()
    assert kinds["demo-1step-encoded"] == kinds["demo-student-encoded"] == "encoded"
    table = compare_runs(store, "demo", "midblock", ["demo-real", "demo-1step-encoded", "demo-student-encoded",
                                                     "demo-multistep"], step=3, per_class=True)
    overall = table[table["class"] == ALL].set_index("run_b")
    naive, student = overall.loc["demo-1step-encoded"], overall.loc["demo-student-encoded"]
    assert set(overall["step_a"]) == set(overall["step_b"]) == {3} and set(overall["n_b"]) == {200}
    assert student["recall"] >= naive["recall"] + 0.3
    assert student["coverage"] >= naive["coverage"] + 0.3
    assert student["fd"] < naive["fd"]
    # the naive 1-step collapses: its same-class samples lie much closer together than the real digits'
    assert naive["diversity_b"] < 0.6 * naive["diversity_a"] and student["diversity_b"] > naive["diversity_b"]
    # per class too: the student covers more of the real digits in most classes
    per = table[table["class"] != ALL].pivot(index="class", columns="run_b", values="coverage")
    assert (per["demo-student-encoded"] > per["demo-1step-encoded"]).mean() >= 0.8


# -- the Compare runs page opens on the comparison ------------------------------------------------------------

def test_default_runs_let_an_encoded_run_stand_in_for_the_run_it_encodes(demo_store):
    from pipeline import run_pairs

    store = Store(demo_store)
    runs, kinds = store.runs(), store.run_kinds()
    assert run_pairs.encoded_sources(runs) == {"demo-1step-encoded": "demo-1step",
                                               "demo-student-encoded": "demo-student",
                                               "demo-teacher-encoded": "demo-teacher"}
    every = list(kinds)
    # real, teacher, naive (the 4-step and the 1-step) and student, each encoded run in its source's place
    assert run_pairs.default_runs(runs, kinds, every) == ["demo-real", "demo-teacher-encoded", "demo-multistep",
                                                          "demo-1step-encoded", "demo-student-encoded"]
    # the menu (every run) keeps the 1-step runs; without their encoded runs they are defaults again
    menu = run_pairs.default_runs(runs, kinds, every, include_edits=True)
    assert set(menu) == set(every) and menu[0] == "demo-real"
    assert run_pairs.default_runs(runs, kinds, ["demo-real", "demo-1step", "demo-student-encoded"]) == [
        "demo-real", "demo-1step", "demo-student-encoded"]
    assert run_pairs.default_runs(runs, kinds, every, stand_ins=False)[:5] == ["demo-real", "demo-teacher",
                                                                               "demo-multistep", "demo-1step",
                                                                               "demo-student"]


def test_the_compare_runs_page_opens_on_the_real_digits_and_the_encoded_runs_at_step_3(demo_store, monkeypatch,
                                                                                       tmp_path):
    from streamlit.testing.v1 import AppTest

    from tests import app_fixtures as fx

    with fx.app_pointed_at(demo_store, monkeypatch, tmp_path):
        at = AppTest.from_file(fx.ENTRY, default_timeout=120)
        at.run()
        at.query_params.clear()
        at.query_params["crmeth"] = "pca"
        at.query_params["crl"] = "midblock"
        at.switch_page("app_pages/compare_runs.py").run()
        for _ in range(100):
            if at.exception or not any("computing…" in str(c.value) for c in at.caption):
                break
            time.sleep(0.3)
            at.run()
        assert not at.exception, at.exception
        assert list(at.session_state["cr_runs"]) == ["demo-real", "demo-teacher-encoded", "demo-multistep",
                                                     "demo-1step-encoded", "demo-student-encoded"]
        assert at.session_state["cr_step"] == "last"
        runs = next(el.value for el in at.dataframe if "measured at step" in el.value.columns)
        assert runs["measured at step"].tolist() == [3, 3, 3, 3, 3]
        metrics = next(el.value for el in at.dataframe if "precision" in el.value.columns)
        assert len(metrics) > 0
