"""The EDM teachers: EDM's Heun sampler (pipeline/sampling.py), the Heun adapter, `demo-teacher` and
`imagenet-teacher` (pipeline/adapters/edm.py, pipeline/families.py)."""

from __future__ import annotations

import io
import json
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.__main__ import main
from pipeline.adapters import build_adapter
from pipeline.adapters.base import sample_seed, seeded_normal
from pipeline.hooks import Recorder
from pipeline.models.edm import EDMPrecond
from pipeline.sampling import Churn, heun_sample, karras_sigmas, to_uint8
from store import Store
from tests.edm_fixtures import TINY_EDM, tiny_edm_adapter


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = EDMPrecond(**TINY_EDM).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def plain_heun(net, x0, labels, ts, s_churn=0.0, s_min=0.0, s_max=float("inf"), s_noise=1.0, noises=None):
    """Karras et al. (2022), Algorithm 2, written out step by step in float64 for the comparison."""
    n = len(ts)
    ts = list(ts) + [0.0]
    x = x0.double() * ts[0]

    def denoise(x, t):
        return net(x.float(), torch.full((len(x),), float(t)), labels).double()

    for i in range(n):
        gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_min <= ts[i] <= s_max else 0.0
        t_hat = ts[i] + gamma * ts[i]
        x_hat = x + (t_hat ** 2 - ts[i] ** 2) ** 0.5 * s_noise * noises[i].double() if gamma else x
        slope = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (ts[i + 1] - t_hat) * slope
        if ts[i + 1] != 0:
            slope2 = (x_next - denoise(x_next, ts[i + 1])) / ts[i + 1]
            x_next = x_hat + (ts[i + 1] - t_hat) * (slope + slope2) / 2
        x = x_next
    return x


def test_heun_matches_the_plain_algorithm(net):
    seeds = [3, 4, 5]
    z = seeded_normal(seeds, (3, 8, 8))
    labels = torch.tensor([1, 2, 7])
    ts = karras_sigmas(6)
    with torch.no_grad():
        ours = heun_sample(net, z, labels, ts)
        ref = plain_heun(net, z, labels, ts)
    torch.testing.assert_close(ours.double(), ref, atol=2e-4, rtol=1e-4)
    # the stochastic sampler too, with the same per-step noise (stream i + 1 of each sample's seed)
    churn = Churn(s_churn=40.0, s_min=0.05, s_max=50.0, s_noise=1.003)
    noises = [seeded_normal(seeds, (3, 8, 8), stream=i + 1) for i in range(len(ts))]
    with torch.no_grad():
        ours = heun_sample(net, z, labels, ts, churn=churn, noise_seeds=seeds)
        ref = plain_heun(net, z, labels, ts, 40.0, 0.05, 50.0, 1.003, noises)
        plain = heun_sample(net, z, labels, ts)
    torch.testing.assert_close(ours.double(), ref, atol=2e-4, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-2  # the churn did something


def test_heun_calls_and_what_a_step_records(net):
    calls, tagged = [], []
    current = {"step": None}

    class Spy(torch.nn.Module):
        def forward(self, x, sigma, labels):
            calls.append((current["step"], float(sigma[0])))
            return net(x, sigma, labels)

    @contextmanager
    def on_step(i, sigma):
        current["step"] = i
        tagged.append((i, sigma))
        yield
        current["step"] = None

    previews = {}
    ts = karras_sigmas(5)
    out = heun_sample(Spy(), seeded_normal([1], (3, 8, 8)), torch.tensor([0]), ts, on_step=on_step,
                      on_denoised=lambda i, s, d: previews.setdefault(i, d))
    assert len(calls) == 2 * len(ts) - 1  # no correction at the last step
    # each step's first call is tagged with the schedule's sigma; the corrections run untagged
    assert [c for c in calls if c[0] is not None] == [(i, pytest.approx(t)) for i, t in enumerate(ts)]
    assert [c[1] for c in calls if c[0] is None] == pytest.approx(ts[1:])
    assert sorted(previews) == list(range(len(ts)))
    torch.testing.assert_close(previews[len(ts) - 1], out, atol=1e-5, rtol=1e-5)  # last D is the image
    with pytest.raises(ValueError, match="decreasing"):
        heun_sample(net, seeded_normal([1], (3, 8, 8)), torch.tensor([0]), [1.0, 2.0])
    with pytest.raises(ValueError, match="s_max must be at least s_min"):
        Churn(s_min=5.0, s_max=1.0)
    churn = Churn(s_churn=3.0, s_min=0.1, s_noise=1.01)
    assert Churn.from_settings(json.loads(json.dumps(churn.settings()))) == churn
    assert Churn.from_settings(None) == Churn() and not Churn().active


@pytest.mark.parametrize("churn", [None, Churn(s_churn=10.0)])
def test_heun_adapter_is_deterministic_per_seed_and_batch_free(churn):
    adapter = tiny_edm_adapter(sigmas=karras_sigmas(4), sampler="heun", churn=churn)
    seeds = [sample_seed(7, i) for i in range(4)]
    conds = adapter.conditions(np.arange(4), seed=7)
    paths = adapter.resolve_layers(["encoder_bottleneck"])
    with Recorder(adapter.root, paths, "mean") as rec:
        a = adapter.sample(seeds, conds, rec)
        acts = rec.pop()["encoder_bottleneck"]
        b = adapter.sample(seeds, conds, rec)
        rec.pop()
        parts = np.concatenate([adapter.sample(seeds[:1], conds[:1], rec), adapter.sample(seeds[1:], conds[1:], rec)])
        rec.pop()
        other = adapter.sample([sample_seed(8, i) for i in range(4)], conds, rec)
    assert np.array_equal(a, b) and np.array_equal(a, parts)
    assert not np.array_equal(a, other)
    assert [r["step"] for r in acts] == [0, 1, 2, 3]  # one record per step: its first call
    expected = karras_sigmas(4)
    if churn is not None:  # churned steps record the raised level, t_hat = (1 + gamma) sigma_i
        expected = [s * (1 + min(10.0 / 4, math.sqrt(2) - 1)) for s in expected]
    assert [r["sigma"] for r in acts] == pytest.approx(expected, rel=1e-6)
    # edits replay the same draws: sample_inputs(edit_inputs(...)) is sample(...)
    again = adapter.sample_inputs(adapter.edit_inputs(seeds, conds), rec)
    assert np.array_equal(a, again)


def test_demo_teacher_draws_digits_the_classifier_recognises():
    from tests.digit_fixtures import digit_predictions

    adapter = build_adapter("demo-teacher", class_ids=list(range(10)), samples_per_class=6)
    assert adapter.name == "demo" and adapter.sampler == "heun" and adapter.num_steps == 18
    n = 60
    conds = adapter.conditions(np.arange(n), seed=0)
    labels = np.array([c.class_id for c in conds])
    assert np.array_equal(np.bincount(labels), [6] * 10)
    with Recorder(adapter.root, {}, "mean") as rec:
        images = adapter.sample([sample_seed(0, i) for i in range(n)], conds, rec)
    accuracy = float((digit_predictions(images) == labels).mean())
    assert accuracy >= 0.9, accuracy  # 0.98 on 100 samples when written


def test_generate_demo_teacher_writes_a_teacher_run_under_demo(tmp_path, capsys):
    store = tmp_path / "s"
    args = ["generate", "--model", "demo-teacher", "--store", str(store), "--num-samples", "4", "--steps", "3",
            "--class-ids", "3,8", "--samples-per-class", "2", "--quiet", "--x0-previews"]
    assert main(args) == 0
    st = Store(store)
    runs = st.runs()
    assert len(runs) == 1 and runs.model[0] == "demo" and runs.run_id[0].startswith("demo-teacher-s0-")
    settings = json.loads(runs.settings[0])
    assert settings["kind"] == "teacher" and settings["sampler"] == "heun"
    assert settings["model_family"] == "demo-teacher" and len(settings["sigmas"]) == 3
    assert settings["churn"] == {"s_churn": 0.0, "s_min": 0.0, "s_max": None, "s_noise": 1.0}
    steps = st.steps("demo", "encoder_bottleneck")
    assert steps["step"].tolist() == [0, 1, 2]
    assert steps["sigma"].tolist() == pytest.approx(karras_sigmas(3), rel=1e-6)
    samples = st.samples("demo")
    assert samples["class_id"].tolist() == [3, 3, 8, 8] and set(samples["num_steps"]) == {3}
    assert sorted(st.previews(samples.sample_id[0])) == [0, 1, 2]
    # rerunning resumes the same run; churn is a different run
    assert main(args) == 0
    assert len(Store(store).runs()) == 1
    assert main(args + ["--s-churn", "5", "--s-max", "30"]) == 0
    runs = Store(store).runs()
    assert len(runs) == 2
    assert json.loads(runs.settings[1])["churn"]["s_churn"] == 5.0


def test_churn_flags_and_teacher_errors_are_clear(tmp_path, capsys):
    base = ["generate", "--store", str(tmp_path / "s"), "--num-samples", "2", "--quiet"]
    assert main(base + ["--model", "demo", "--s-churn", "3"]) == 2
    assert "--s-churn applies to the models sampled with EDM's Heun sampler (demo-teacher, imagenet-teacher)" \
        in capsys.readouterr().err
    assert main(base + ["--model", "imagenet-teacher"]) == 2
    assert "--model imagenet-teacher needs --checkpoint" in capsys.readouterr().err
    assert main(base + ["--model", "demo-teacher", "--s-churn", "1", "--s-min", "9", "--s-max", "2"]) == 2
    assert "s_max must be at least s_min" in capsys.readouterr().err
    bad = tmp_path / "edm.pkl"
    bad.write_bytes(b"\x80\x04garbage")
    assert main(base + ["--model", "imagenet-teacher", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a readable EDM network pickle" in err and "Traceback" not in err
    zipped = tmp_path / "pytorch_model.bin"
    torch.save({"model.x": torch.zeros(1)}, zipped)
    assert main(base + ["--model", "imagenet-teacher", "--checkpoint", str(zipped)]) == 2
    assert "not EDM's network pickle: a state dict (e.g. DMD2's pytorch_model.bin) loads with --model imagenet" \
        in capsys.readouterr().err


def test_imagenet_teacher_from_an_edm_pickle(tmp_path):
    from tests.test_edm_pickle import TINY, _tiny_net, write_edm_pickle

    net = _tiny_net(seed=3)
    path = tmp_path / "edm-imagenet-tiny-cond-adm.pkl"
    write_edm_pickle(net, path)
    store = tmp_path / "s"
    assert main(["generate", "--model", "imagenet-teacher", "--checkpoint", str(tmp_path), "--store", str(store),
                 "--num-samples", "3", "--steps", "2", "--layers", "midblock", "--quiet"]) == 0
    st = Store(store)
    runs = st.runs()
    assert runs.model.tolist() == ["imagenet"] and runs.run_id[0].startswith("imagenet-teacher-s0-")
    settings = json.loads(runs.settings[0])
    assert settings["kind"] == "teacher" and settings["config"]["model_channels"] == TINY["model_channels"]
    # the stored images are the pickled network's Heun samples
    adapter = build_adapter("imagenet-teacher", checkpoint=str(path), steps=2)
    conds = adapter.conditions(np.arange(3), seed=0)
    z = seeded_normal([sample_seed(0, i) for i in range(3)], (3, 8, 8))
    onehot = torch.nn.functional.one_hot(torch.tensor([c.class_id for c in conds]), TINY["label_dim"]).float()
    with torch.no_grad():
        direct = heun_sample(net, z, onehot, karras_sigmas(2))
    stored = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
                       for b in st.images(st.samples("imagenet").sample_id.tolist())])
    assert np.array_equal(stored, to_uint8(direct))


def test_demo_teacher_has_the_seeds_and_classes_of_the_demo_1step_run():
    """What `python -m pipeline demo` relies on to put a teacher run beside its 1-step run: the same seed and
    samples_per_class give the same classes and the same start noise, sample by sample."""
    from pipeline.adapters.edm import demo_teacher_loader, load_demo

    one = load_demo(torch.device("cpu"), steps=1, samples_per_class=3)
    teacher = demo_teacher_loader(samples_per_class=3)
    indices = np.arange(30)
    assert one.conditions(indices, seed=0) == teacher.conditions(indices, seed=0)
    seeds = [sample_seed(0, int(i)) for i in indices]
    conds = one.conditions(indices, seed=0)
    a, b = one.edit_inputs(seeds, conds), teacher.edit_inputs(seeds, conds)
    assert torch.equal(a["z"], b["z"]) and torch.equal(a["labels"], b["labels"])
    assert b["eps"].shape[1] == 0  # the deterministic teacher draws no other noise
