"""encode-real (issue 14, part 1): real images through the generator's network as runs of kind `real`.

Each source kind with bad items among them (reported by name and skipped), labels and captions stored, the
noise formula (EDM: x = image + sigma·n; SD: the VAE latent noised with the scheduler's alpha-bar), determinism
per seed, resume after an interruption, the command line, the `run_kind` column, and what the encoding means: the
demo network, shown real digits at sigma 1, returns digits the classifier reads as the image's digit."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.adapters.base import sample_seed, seeded_normal
from pipeline.real import encode_real, noise_level
from pipeline.sources import SourceError, open_source
from store import Store
from tests.edm_fixtures import tiny_edm_adapter


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _framed(colour: int, h: int = 24, w: int = 40) -> np.ndarray:
    """A landscape image: a centred square of `colour`, white bands left and right (cut by a centre crop)."""
    img = np.full((h, w, 3), 255, np.uint8)
    left = (w - h) // 2
    img[:, left:left + h] = colour
    return img


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "classes"
    for name, colour in (("3", 40), ("7", 200)):
        for k in range(3):
            _png(root / name / f"img{k}.png", _framed(colour))
    (root / "7" / "broken.jpg").write_bytes(b"this is not a jpeg")  # unreadable: reported when read
    (root / "7" / "notes.txt").write_text("not an image, ignored")
    _png(root / "n01440764" / "tench.png", _framed(90))  # a WordNet id: no class of a 10-class model
    _png(root / "cats" / "cat.png", _framed(90))  # neither a class index nor a WordNet id
    return root


# -- sources --------------------------------------------------------------------------------------------------

def test_the_digits_are_the_demo_models_training_data():
    from pipeline.demo_model import digits_dataset

    src = open_source("digits", class_names=[str(i) for i in range(10)])
    images, labels = digits_dataset(16)
    assert src.kind == "digits" and len(src.items) == len(images) == 1797 and not src.problems
    assert [i.class_id for i in src.items] == labels.tolist()
    for k in (0, 17, 1796):  # the same function prepares them: the very tensors the model was trained on
        assert np.array_equal(src.load(src.items[k], 16), images[k].numpy())


def test_class_folders_by_index_or_wordnet_id_are_interleaved_and_unknown_ones_reported(class_folder):
    src = open_source(str(class_folder), class_names=[str(i) for i in range(10)])
    assert src.kind == "classes"
    assert [i.name for i in src.items] == ["3/img0.png", "7/broken.jpg", "3/img1.png", "7/img0.png",
                                           "3/img2.png", "7/img1.png", "7/img2.png"]
    assert dict(src.problems) == {"cats/": "unknown class folder: not a class index 0..9",
                                  "n01440764/": "unknown class folder: not a class index 0..9"}
    # a 1000-class model reads the WordNet id as its ImageNet index (0 = tench) and `207` as class 207
    (class_folder / "207").mkdir()
    _png(class_folder / "207" / "dog.png", _framed(10))
    imagenet = open_source(str(class_folder), class_names=[f"c{i}" for i in range(1000)])
    assert {i.class_id for i in imagenet.items} == {0, 3, 7, 207}
    assert [name for name, _ in imagenet.problems] == ["cats/"]
    # centre crop, then resize: the white bands beside the square are cut off
    item = next(i for i in src.items if i.name == "3/img0.png")
    assert np.allclose(src.load(item, 8), 40 / 127.5 - 1, atol=1e-6)


def test_caption_folder_and_tables_report_missing_captions_and_files(tmp_path):
    folder = tmp_path / "captioned"
    _png(folder / "a.png", _framed(10))
    (folder / "a.txt").write_text("a dark square\n")
    _png(folder / "b.png", _framed(20))  # no caption beside it
    _png(folder / "c.png", _framed(30))
    (folder / "c.txt").write_text("   ")  # an empty caption
    (folder / "d.jpg").write_bytes(b"\x89PNG broken")  # captioned, but unreadable: found when read
    (folder / "d.txt").write_text("a broken file")
    src = open_source(str(folder))
    assert src.kind == "captions" and src.conditioning == "prompt"
    assert [(i.name, i.caption) for i in src.items] == [("a.png", "a dark square"), ("d.jpg", "a broken file")]
    assert src.problems == [("b.png", "missing caption (no b.txt beside it)"),
                            ("c.png", "missing caption (c.txt is empty)")]

    rows = {"file_name": ["a.png", "b.png", "gone.png", "c.png"], "text": ["dark", "", "lost", "light"]}
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame.to_csv(folder / "set.csv", index=False)
    frame.to_json(folder / "set.jsonl", orient="records", lines=True)
    pq.write_table(pa.Table.from_pandas(frame), folder / "set.parquet")
    for name, where in (("set.csv", "line"), ("set.jsonl", "row"), ("set.parquet", "row")):
        table = open_source(str(folder / name))
        assert [(i.path.name, i.caption) for i in table.items] == [("a.png", "dark"), ("c.png", "light")], name
        first = 2 if where == "line" else 1
        assert [why for _, why in table.problems] == ["missing caption", f"no such image file: {folder / 'gone.png'}"]
        assert table.problems[0][0] == f"b.png ({where} {first + 1})"
    (folder / "nocap.csv").write_text("image,score\na.png,3\n")
    with pytest.raises(SourceError, match="no caption column .*--caption-column"):
        open_source(str(folder / "nocap.csv"))
    assert len(open_source(str(folder / "nocap.csv"), caption_column="score").items) == 1
    with pytest.raises(SourceError, match="not found"):
        open_source(str(tmp_path / "nowhere"))


# -- EDM ------------------------------------------------------------------------------------------------------

def test_edm_images_are_noised_at_sigma_with_per_sample_seeds_and_stored_with_labels(tmp_path, class_folder):
    adapter = tiny_edm_adapter()  # 8 px, schedule (80, 5, 0.5): by default the last sigma, step 2
    src = open_source(str(class_folder), class_names=adapter.class_names)
    skipped = []
    result = encode_real(adapter, src, tmp_path, ["enc.8x8_conv", "midblock"], seed=5, batch_size=3,
                         reduce="full", progress=False, on_skip=lambda n, why: skipped.append(n))
    assert sorted(skipped) == ["7/broken.jpg", "cats/", "n01440764/"]
    assert result.encoded == 6 and result.total_done == 6 and len(result.skipped) == 3
    store = Store(tmp_path)
    manifest = store.manifest(result.run_id)
    assert manifest["settings"]["kind"] == "real" and manifest["settings"]["sigma"] == 0.5
    assert manifest["settings"]["step"] == 2 and manifest["settings"]["source"]["kind"] == "classes"
    frame = store.samples(run_ids=[result.run_id])
    assert frame["index"].tolist() == [0, 2, 3, 4, 5, 6]  # index 1 (the broken file) stays empty
    assert frame["label"].tolist() == ["3: three", "3: three", "7: seven", "3: three", "7: seven", "7: seven"]
    assert set(frame["run_kind"]) == {"real"} and set(frame["num_steps"]) == {1}
    assert (frame["width"] == 8).all()
    steps = store.steps(adapter.name, "midblock")
    assert steps["step"].tolist() == [2] and steps["sigma"].tolist() == [0.5]

    # the first conv sees c_in·(image + sigma·n) with n drawn from (run seed, index), as generation draws it
    acts = store.activations(adapter.name, "enc.8x8_conv", step=2, run_ids=[result.run_id])
    idx = frame["index"].tolist()
    images = np.stack([src.load(src.items[i], 8) for i in idx])
    noise = seeded_normal([sample_seed(5, i) for i in idx], (3, 8, 8))
    x = torch.from_numpy(images) + 0.5 * noise
    with torch.no_grad():
        want = adapter.net.model.enc["8x8_conv"](x / math.sqrt(0.5**2 + 0.5**2)).numpy()
    assert np.allclose(acts.matrix.reshape(want.shape), want, atol=2e-2, rtol=1e-2)
    # the stored image is the prepared real image
    stored = np.asarray(Image.open(__import__("io").BytesIO(store.image(frame["sample_id"][0]))))
    assert (stored == 40).all()


def test_an_imagenet_folder_by_wordnet_id_is_labelled_with_imagenet_classes(tmp_path):
    """A 1000-class network (ImageNet's label space, tiny otherwise): WordNet-id and index folders."""
    from pipeline.adapters.edm import EDMAdapter
    from pipeline.imagenet_classes import class_name
    from pipeline.models.edm import EDMPrecond
    from tests.edm_fixtures import TINY_EDM

    config = {**TINY_EDM, "label_dim": 1000}
    torch.manual_seed(0)
    adapter = EDMAdapter(EDMPrecond(**config), config, name="imagenet", sigmas=[80.0],
                         class_names=[class_name(i) for i in range(1000)], device=torch.device("cpu"),
                         checkpoint="random init", checkpoint_sha256="seed0")
    root = tmp_path / "imagenet"
    _png(root / "n01440764" / "a.JPEG", _framed(50, 64, 80))
    _png(root / "207" / "b.png", _framed(60, 80, 64))
    _png(root / "n99999999" / "c.png", _framed(70))  # a WordNet id of no ImageNet class
    result = encode_real(adapter, open_source(str(root), class_names=adapter.class_names), tmp_path / "s",
                         ["midblock"], sigma=0.5, progress=False, on_skip=lambda *a: None)
    assert [n for n, _ in result.skipped] == ["n99999999/"]
    frame = Store(tmp_path / "s").samples()
    assert frame["label"].tolist() == ["0: tench", "207: golden retriever"] and (frame["width"] == 8).all()


def test_the_same_seed_gives_the_same_run_and_a_killed_run_resumes(tmp_path):
    adapter = tiny_edm_adapter()
    src = open_source("digits", class_names=adapter.class_names)

    def run(root, seed=0, **kw):
        return encode_real(adapter, src, root, ["midblock"], sigma=1.0, num_samples=12, seed=seed, batch_size=4,
                           progress=False, run_id="real", **kw)

    def matrix(root):
        return Store(root).activations(adapter.name, "midblock", step=0).matrix

    run(tmp_path / "a")
    run(tmp_path / "b")
    run(tmp_path / "c", seed=1)
    assert np.array_equal(matrix(tmp_path / "a"), matrix(tmp_path / "b"))
    assert not np.allclose(matrix(tmp_path / "a"), matrix(tmp_path / "c"))

    class Killed(Exception):
        pass

    def kill_after_first(done, total):
        if done >= 4:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path / "k", on_batch=kill_after_first)
    assert Store(tmp_path / "k").manifest("real")["status"] == "interrupted"
    assert len(Store(tmp_path / "k").samples()) == 4
    again = run(tmp_path / "k")
    assert again.encoded == 8 and again.total_done == 12
    assert Store(tmp_path / "k").manifest("real")["status"] == "complete"
    assert np.array_equal(matrix(tmp_path / "k"), matrix(tmp_path / "a"))


def test_noise_levels_default_to_the_schedules_last_step_and_refuse_what_does_not_apply():
    adapter = tiny_edm_adapter()
    assert noise_level(adapter) == noise_level(adapter, sigma=0.5)
    assert noise_level(adapter).step == 2 and noise_level(adapter, sigma=5.0).step == 1
    assert noise_level(adapter, sigma=0.3).step == 0 and noise_level(adapter, sigma=0.3, step=2).step == 2
    with pytest.raises(ValueError, match="takes --sigma"):
        noise_level(adapter, timestep=100)
    with pytest.raises(ValueError, match="give --sigma: tiny samples in one step"):
        noise_level(tiny_edm_adapter(sigmas=(80.0,)))
    with pytest.raises(ValueError, match="positive"):
        noise_level(adapter, sigma=0.0)


def test_a_class_model_refuses_captions_before_writing_anything(tmp_path):
    folder = tmp_path / "captioned"
    _png(folder / "a.png", _framed(10))
    (folder / "a.txt").write_text("a square")
    with pytest.raises(SourceError, match="conditioned on a class label"):
        encode_real(tiny_edm_adapter(), open_source(str(folder)), tmp_path / "store", ["midblock"], progress=False)
    assert not (tmp_path / "store").exists()


# -- SD / SDXL ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tests.t2i_fixtures import tiny_files

    return tiny_files(tmp_path_factory)


@pytest.fixture
def captions(tmp_path):
    folder = tmp_path / "captioned"
    rng = np.random.default_rng(0)
    for k, text in enumerate(("a cat on a mat", "a red car", "a bowl of soup")):
        _png(folder / f"im{k}.png", rng.integers(0, 256, (20, 20, 3)))
        (folder / f"im{k}.txt").write_text(text)
    _png(folder / "nocaption.png", rng.integers(0, 256, (20, 20, 3)))
    return folder


def test_sd_latents_are_noised_with_the_schedulers_alpha_bar_and_the_unet_sees_the_caption(tmp_path, files,
                                                                                          captions):
    from diffusers import DDIMScheduler

    from tests.t2i_fixtures import build

    adapter = build(files, "sd15")  # 1-step at t=999: the timestep must be given
    src = open_source(str(captions))
    with pytest.raises(ValueError, match="give --timestep"):
        encode_real(adapter, src, tmp_path / "none", ["conv_in"], progress=False)
    result = encode_real(adapter, src, tmp_path, ["conv_in", "mid"], timestep=500, seed=2, reduce="full",
                         progress=False, previews=True, on_skip=lambda *a: None)
    assert [n for n, _ in result.skipped] == ["nocaption.png"] and result.encoded == 3
    store = Store(tmp_path)
    frame = store.samples(run_ids=[result.run_id])
    assert frame["prompt"].tolist() == frame["label"].tolist() == ["a cat on a mat", "a red car", "a bowl of soup"]
    assert frame["preview_steps"].map(list).tolist() == [[0]] * 3  # the denoised output, decoded
    ab = float(DDIMScheduler.from_pretrained(str(files.sd15), subfolder="scheduler").alphas_cumprod[500])
    steps = store.steps("sd15", "conv_in")
    assert steps["timestep"].tolist() == [500]
    assert steps["sigma"].tolist() == pytest.approx([math.sqrt((1 - ab) / ab)], rel=1e-5)
    manifest = store.manifest(result.run_id)["settings"]
    assert manifest["kind"] == "real" and manifest["timestep"] == 500 and manifest["alpha_bar"] == pytest.approx(ab)

    # conv_in sees sqrt(ab)·z + sqrt(1 - ab)·n: z the VAE's latent mean (scaled), n the seeded noise
    images = torch.from_numpy(np.stack([src.load(i, 16) for i in src.items]))
    with torch.no_grad():
        z = adapter.vae.encode(images).latent_dist.mean * adapter.vae.config.scaling_factor
        n = seeded_normal([sample_seed(2, i) for i in range(3)], (4, 8, 8))
        want = adapter.unet.conv_in(math.sqrt(ab) * z + math.sqrt(1 - ab) * n).numpy()
    got = store.activations("sd15", "conv_in", step=0).matrix.reshape(want.shape)
    assert np.allclose(got, want, atol=2e-2, rtol=1e-2)

    # the caption reaches the UNet: the same images with other captions give other mid-block activations
    for item, text in zip(src.items, ("a castle at night", "a photo of a dog", "an empty room"), strict=True):
        item.path.with_suffix(".txt").write_text(text)
    other = encode_real(adapter, open_source(str(captions)), tmp_path, ["conv_in", "mid"], timestep=500, seed=2,
                        reduce="full", progress=False, on_skip=lambda *a: None)
    assert other.run_id != result.run_id
    mid = {r: Store(tmp_path).activations("sd15", "mid", step=0, run_ids=[r]).matrix
           for r in (result.run_id, other.run_id)}
    conv = {r: Store(tmp_path).activations("sd15", "conv_in", step=0, run_ids=[r]).matrix
            for r in (result.run_id, other.run_id)}
    assert np.array_equal(conv[result.run_id], conv[other.run_id])  # same images, same noise
    assert not np.allclose(mid[result.run_id], mid[other.run_id], atol=1e-3)


def test_sdxl_multistep_defaults_to_its_last_timestep_and_shares_that_steps_map(tmp_path, files, captions):
    from tests.t2i_fixtures import build

    adapter = build(files, "sdxl-4step")
    level = noise_level(adapter)
    assert (level.timestep, level.step) == (adapter.timesteps[-1], 3)
    result = encode_real(adapter, open_source(str(captions)), tmp_path, ["mid"], progress=False,
                         on_skip=lambda *a: None)
    assert Store(tmp_path).steps("sdxl-4step", "mid")["step"].tolist() == [3] and result.encoded == 3
    with pytest.raises(SourceError, match="conditioned on text"):
        encode_real(adapter, open_source("digits"), tmp_path, ["mid"], progress=False)


# -- the command line -----------------------------------------------------------------------------------------

def test_the_command_reports_each_skipped_item_and_a_summary(tmp_path, class_folder, capsys):
    from pipeline.__main__ import main

    store = tmp_path / "store"
    argv = ["encode-real", "--model", "demo", "--images", str(class_folder), "--store", str(store),
            "--layers", "midblock", "--sigma", "0.47", "--batch-size", "4", "--quiet"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "skipped 7/broken.jpg: unreadable image" in err and "skipped cats/: unknown class folder" in err
    assert "skipped n01440764/: unknown class folder" in err
    assert "encoded 6 real images (classes)" in out and "skipped 3: 2 unknown class folder, 1 unreadable image" in out
    manifest = Store(store).manifest(Store(store).runs()["run_id"][0])
    assert manifest["settings"]["step"] == 2  # the demo's 4-step schedule samples at 0.47 in its step 2
    assert main(argv) == 0  # again: nothing left to do
    assert "encoded 0 real images" in capsys.readouterr().out

    for bad, message in (
        (["--images", str(tmp_path / "nowhere")], "image source not found"),
        (["--timestep", "10"], "takes --sigma"),
        (["--layers", "nolayer"], "unknown layer(s) nolayer"),
    ):
        args = ["encode-real", "--model", "demo", "--images", str(class_folder), "--store", str(store), *bad]
        assert main(args) == 2, bad
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


# -- the run kind ---------------------------------------------------------------------------------------------

def test_run_kind_is_derived_from_the_manifests_so_old_stores_read_it(tmp_path):
    from app import views
    from store import RunWriter, schema

    def run(run_id, settings):
        manifest = {"run_id": run_id, "model": "m", "layers": [], "seed": 0, "settings": settings}
        with RunWriter(tmp_path, manifest) as w:
            w.write_batch([0, 1], [{"seed": 1, "label": "a"}, {"seed": 2, "label": "b"}], None, {})

    run("gen", {"steps": 1})  # written before kinds existed: generated
    run("enc", {"kind": "real"})
    run("ed", {"kind": "edit"})
    store = Store(tmp_path)
    assert store.run_kinds() == {"gen": "generated", "enc": "real", "ed": "edit"}
    frame = store.samples()
    assert dict(zip(frame["run_id"], frame["run_kind"], strict=False)) == {"gen": "generated", "enc": "real",
                                                                          "ed": "edit"}
    assert store.cursor().sql("SELECT count(*) FROM samples WHERE run_kind = 'real'").fetchall() == [(2,)]
    assert schema.run_kind(json.dumps({"kind": "teacher"})) == "teacher" and schema.run_kind(None) == "generated"
    # a manifest rewritten with another kind is read again
    (tmp_path / "runs" / "enc.parquet").unlink()
    assert set(Store(tmp_path).samples(run_ids=["enc"])["run_kind"]) == {"generated"}
    assert store.run_kinds()["gen"] == "generated" and "enc" not in store.run_kinds()
    # searchable like any samples column
    from store.search import SafeSearch

    with SafeSearch(store) as search:
        assert sorted(search.where("run_kind = 'edit'").sample_ids) == ["ed-00000000", "ed-00000001"]
    # the map can be coloured by it, titled "run kind"
    assert "run_kind" in views.coloring_keys(frame) and views.coloring_title("run_kind") == "run kind"


# -- meaning --------------------------------------------------------------------------------------------------

def test_real_digits_shown_to_the_demo_network_come_back_as_the_same_digits():
    """At sigma = 1 the demo network's output is read as the right digit far more often than its noisy input,
    and with a wrong label it still returns the image's digit: the encoding carries the real image."""
    from pipeline.adapters.edm import load_demo
    from pipeline.demo_model import digit_accuracy
    from pipeline.hooks import Recorder
    from pipeline.real import encode_batch, to_uint8_hwc

    adapter = load_demo(torch.device("cpu"))
    src = open_source("digits", class_names=adapter.class_names)
    picked = list(range(0, 1797, 9))  # 200 digits
    images = np.stack([src.load(src.items[i], 16) for i in picked])
    labels = np.array([src.items[i].class_id for i in picked])
    seeds = [sample_seed(0, i) for i in picked]
    level = noise_level(adapter, sigma=1.0)

    def denoised(classes):
        with Recorder(adapter.root, adapter.resolve_layers(["midblock"])) as rec:
            return encode_batch(adapter, images, seeds, [adapter.condition(class_id=int(c)) for c in classes],
                                level, rec, denoised=True)

    noisy = to_uint8_hwc(images + 1.0 * seeded_normal(seeds, (3, 16, 16)).numpy())
    right, wrong = denoised(labels), denoised((labels + 1) % 10)
    assert digit_accuracy(right, labels) >= 0.95
    assert digit_accuracy(noisy, labels) <= digit_accuracy(right, labels) - 0.05
    assert digit_accuracy(wrong, labels) >= 0.8


# -- the app: Overview lists the kind of each run, Explore colours by it --------------------------------------

@pytest.fixture
def mixed_store(tmp_path):
    """A tiny model's generated run (3 steps) and a real run recorded at its last step."""
    from pipeline.generate import generate

    root = tmp_path / "mixed"
    adapter = tiny_edm_adapter()
    generate(adapter, root, 20, ["midblock"], seed=0, batch_size=10, run_id="tiny-gen", progress=False)
    encode_real(adapter, open_source("digits", class_names=adapter.class_names), root, ["midblock"],
                num_samples=20, batch_size=10, run_id="tiny-real", progress=False)
    return root


def test_overview_lists_each_runs_kind_and_explore_colours_by_it(mixed_store, monkeypatch, tmp_path):
    from tests.app_fixtures import app_pointed_at, app_test

    with app_pointed_at(mixed_store, monkeypatch, tmp_path):
        at = app_test("app_pages/overview.py")
        assert not at.exception
        runs = at.dataframe[0].value
        assert dict(zip(runs["run"], runs["run kind"], strict=True)) == {"tiny-gen": "generated", "tiny-real": "real"}
        per_run = next(d.value for d in at.dataframe if list(d.value.columns)[:3] == ["run", "run kind", "samples"])
        assert per_run[["run", "run kind", "samples"]].values.tolist() == [["tiny-gen", "generated", 20],
                                                                            ["tiny-real", "real", 20]]

        at = app_test(query={"model": "tiny", "layer": "midblock"})
        assert not at.exception
        colour = at.selectbox(key="w_color")
        assert "run kind" in colour.options  # the menu names it by its declared title
        colour.set_value("run_kind").run()
        assert not at.exception and at.selectbox(key="w_color").value == "run_kind"


def test_a_teacher_encodes_real_images_with_its_conditional_unet_pass(tmp_path, files, captions):
    """sd15-teacher (the base UNet, its own scheduler and guidance when sampling): a real image's record is the
    conditional UNet pass at x_t, as a teacher run records it; the run is named after the teacher."""
    from pipeline.adapters import build_adapter
    from pipeline.prompts import PromptSet
    from tests.t2i_fixtures import build

    teacher = build_adapter("sd15-teacher", base_model=str(files.sd15), prompts=PromptSet.from_lists(["x"]),
                            steps=4, guidance=1.75)
    result = encode_real(teacher, open_source(str(captions)), tmp_path, ["mid"], timestep=500, seed=2,
                         reduce="full", progress=False, on_skip=lambda *a: None)
    assert result.run_id.startswith("real-sd15-teacher-captions-") and result.encoded == 3
    assert Store(tmp_path).manifest(result.run_id)["settings"]["kind"] == "real"
    # the student's UNet differs, the images and noise do not: another record of the same x_t
    student = encode_real(build(files, "sd15"), open_source(str(captions)), tmp_path, ["mid"], timestep=500,
                          seed=2, reduce="full", progress=False, on_skip=lambda *a: None)
    mids = [Store(tmp_path).activations("sd15", "mid", step=0, run_ids=[r]).matrix
            for r in (result.run_id, student.run_id)]
    assert mids[0].shape == mids[1].shape and not np.allclose(mids[0], mids[1], atol=1e-3)
