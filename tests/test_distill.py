"""The DMD2-distilled demo student: the recipe's mechanics (pipeline/distill.py) on a tiny network, and the
shipped student's samples (pipeline/data/demo_student.safetensors, `demo-student`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipeline import distill
from pipeline.__main__ import main
from pipeline.adapters import build_adapter
from pipeline.adapters.base import sample_seed, seeded_normal
from pipeline.hooks import Recorder
from pipeline.models.edm import EDMPrecond
from pipeline.sampling import to_uint8
from store import Store
from tests.edm_fixtures import TINY_EDM

TINY = {**TINY_EDM, "model_channels": 8, "channels_per_head": 8, "sigma_data": 0.5, "dropout": 0.0}


def tiny_teacher(seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    return EDMPrecond(**TINY).eval()


def state_of(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# ------------------------------------------------------------------ the recipe's pieces on constructed cases
def test_dmd_gradient_is_the_score_difference_normalised_per_sample():
    x = torch.zeros(2, 1, 2, 2)
    real = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    real[1] *= 4  # the second sample is four times as far from the real estimate
    fake = real + torch.tensor([2.0, 0.0, 0.0, -2.0]).reshape(1, 1, 2, 2)
    grad = distill.dmd_gradient(x, real, fake)
    # mean |x - real| is 1 for the first sample and 4 for the second
    assert torch.allclose(grad[0], torch.tensor([2.0, 0.0, 0.0, -2.0]).reshape(1, 2, 2))
    assert torch.allclose(grad[1], torch.tensor([0.5, 0.0, 0.0, -0.5]).reshape(1, 2, 2))
    # where fake and real agree, the student is where the teacher wants it: no gradient
    assert torch.count_nonzero(distill.dmd_gradient(x, real, real)) == 0
    # the surrogate 0.5·||x − sg(x − grad)||² (mean) has exactly grad / numel as its gradient
    leaf = torch.randn(2, 1, 2, 2, requires_grad=True)
    distill._dmd_loss(leaf, grad).backward()
    assert torch.allclose(leaf.grad, grad / grad.numel())
    # a sample sitting on the real estimate gives a finite gradient, not inf/nan
    assert torch.isfinite(distill.dmd_gradient(real, real, fake)).all()


def test_intra_class_diversity_on_known_sets():
    a = np.zeros((4, 2, 2, 3), np.uint8)
    a[1] = 255  # class 0: a black and a white 2x2 image: distance sqrt(4) = 2
    a[3, 0, 0] = 255  # class 1: differ in one pixel: distance 1
    assert distill.intra_class_diversity(a, np.array([0, 0, 1, 1])) == pytest.approx(1.5)
    collapsed = np.repeat(a[:1], 6, axis=0)
    assert distill.intra_class_diversity(collapsed, np.array([0, 0, 0, 1, 1, 1])) == 0.0
    # three points on a line at 0, 3, 4 (float input is used as is): pairs 3, 4, 1
    line = np.array([[0.0], [3.0], [4.0]])
    assert distill.intra_class_diversity(line, np.zeros(3)) == pytest.approx(8 / 3)
    with pytest.raises(ValueError, match="two or more"):
        distill.intra_class_diversity(a[:2], np.array([0, 1]))


# ------------------------------------------------------------------ a short run of the recipe on a tiny teacher
def test_the_fake_score_network_learns_the_students_outputs():
    """With the student frozen (lr 0), the fake network's denoising loss on a fixed batch of the student's
    outputs falls as it trains: it is fitting the student's distribution."""
    teacher = tiny_teacher()
    gen = torch.Generator().manual_seed(5)
    z, labels = torch.randn(32, 3, 8, 8, generator=gen), torch.randint(10, (32,), generator=gen)
    sigma = torch.exp(torch.randn(32, generator=gen) * 0.8)
    noise = torch.randn(32, 3, 8, 8, generator=gen)
    state = distill.init_state(teacher, steps=1, batch_size=32, fake_steps=60, lr_student=0.0, lr_fake=3e-3)
    with torch.no_grad():
        images = distill.student_sample(state.student, z, labels)
        before = distill.fake_score_loss(state.fake, images, labels, sigma, noise).item()
    record = distill.distill_step(state, torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = distill.fake_score_loss(state.fake, images, labels, sigma, noise).item()
    assert after < 0.7 * before, (before, after)
    assert record["step"] == 1 and record["fake_loss"] > 0
    student, original = state_of(state.student), state_of(teacher)
    assert all(torch.equal(student[k], original[k]) for k in original)


def test_training_is_deterministic_moves_the_student_and_leaves_the_teacher():
    teacher = tiny_teacher()
    original = state_of(teacher)
    kwargs = dict(steps=3, batch_size=4, fake_steps=2, eval_every=0, threads=1)
    a = distill.train_student(teacher, seed=1, **kwargs)
    b = distill.train_student(teacher, seed=1, **kwargs)
    c = distill.train_student(teacher, seed=2, **kwargs)
    sa, sb, sc = state_of(a.student), state_of(b.student), state_of(c.student)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert any(not torch.equal(sa[k], original[k]) for k in sa)  # the student moved
    assert all(torch.equal(v, original[k]) for k, v in state_of(teacher).items())  # the teacher did not
    assert [r["step"] for r in a.history] == [1, 2, 3]
    assert [r["fake_loss"] for r in a.history] == [r["fake_loss"] for r in b.history]
    with pytest.raises(ValueError, match="unknown distillation settings"):
        distill.init_state(teacher, learning_rate=1.0)
    with pytest.raises(ValueError, match="fake_steps must be 1 or more"):
        distill.init_state(teacher, fake_steps=0)


def test_the_command_writes_loadable_weights_with_their_recipe(tmp_path, capsys, monkeypatch):
    from pipeline import demo_model

    teacher_path = tmp_path / "teacher.safetensors"
    demo_model._save_weights(EDMPrecond(**demo_model.DEMO_CONFIG), teacher_path, {"step": "0"})
    out = tmp_path / "student.safetensors"
    assert main(["train-demo-student", "--steps", "2", "--batch-size", "2", "--fake-steps", "1", "--teacher",
                 str(teacher_path), "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "trained 2 student steps" in printed and "recognised" in printed
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["steps"] == "2" and "DMD2" in meta["recipe"] and eval(meta["distill"])["fake_steps"] == 1
    distill.load_student(out)  # the demo architecture, loadable
    assert main(["train-demo-student", "--teacher", str(tmp_path / "missing.safetensors"), "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "cannot load the teacher" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["train-demo-student", "--out", str(tmp_path / "file" / "w.safetensors")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main(["train-demo-student", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    for bad in (["--fake-steps", "0"], ["--steps", "0"], ["--batch-size", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(["train-demo-student", *bad])
        assert exc.value.code == 2


# ------------------------------------------------------------------ the shipped student
STUDENT_RECOGNITION = 0.97
"""The shipped student's recognition as measured (evaluate_student: 200 samples, 20 per digit) when it was
trained; the test allows 2 points less (the issue's target, 95%)."""


@pytest.fixture(scope="module")
def measured():
    """Recognition and diversity of 20 samples per digit: the shipped student, the naive 1-step (the teacher
    once at sigma 80 on the same noise), and the real digits."""
    from pipeline.demo_model import digits_dataset, load_demo_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    images, labels = digits_dataset(16)
    real = ((images + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return {"student": distill.evaluate_student(distill.load_student()),
            "naive": distill.evaluate_student(load_demo_model()),
            "real": distill.intra_class_diversity(real, labels.numpy())}


def test_shipped_student_draws_recognisable_digits(measured):
    s = measured["student"]
    print(f"\ndemo student, 1-step samples recognised: {s['recognition']:.1%} of 200 (naive 1-step "
          f"{measured['naive']['recognition']:.1%})")
    assert s["recognition"] >= STUDENT_RECOGNITION - 0.02


def test_shipped_student_is_as_diverse_as_the_real_digits_and_not_collapsed(measured):
    s, real, naive = measured["student"]["diversity"], measured["real"], measured["naive"]["diversity"]
    print(f"\nintra-class diversity: student {s:.3f}, real digits {real:.3f}, naive 1-step {naive:.3f}")
    assert abs(s - real) <= 0.2 * real
    assert s > 3 * naive  # the naive 1-step collapses to class means; the distilled student does not



def test_generate_demo_student_writes_a_student_run_under_demo(tmp_path):
    store = tmp_path / "s"
    args = ["generate", "--model", "demo-student", "--store", str(store), "--num-samples", "4",
            "--class-ids", "3,8", "--samples-per-class", "2", "--quiet"]
    assert main(args) == 0
    st = Store(store)
    runs = st.runs()
    assert len(runs) == 1 and runs.model[0] == "demo" and runs.run_id[0].startswith("demo-student-s0-")
    settings = json.loads(runs.settings[0])
    assert settings["kind"] == "student" and settings["model_family"] == "demo-student"
    assert settings["sigmas"] == [80.0]
    samples = st.samples("demo")
    assert samples["class_id"].tolist() == [3, 3, 8, 8] and set(samples["num_steps"]) == {1}
    assert main(args + ["--steps", "2"]) == 2  # a 1-step generator
    # the stored images are the student's one call at sigma 80 on the samples' start noise
    import io

    from PIL import Image

    z = seeded_normal([sample_seed(0, i) for i in range(4)], (3, 16, 16))
    with torch.no_grad():
        direct = to_uint8(distill.student_sample(distill.load_student(), z, torch.tensor([3, 3, 8, 8])))
    stored = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
                       for b in st.images(samples.sample_id.tolist())])
    assert np.abs(stored.astype(int) - direct.astype(int)).max() <= 1


def test_demo_student_has_the_seeds_and_classes_of_the_demo_1step_run():
    from pipeline.adapters.edm import demo_student_loader, load_demo

    one = load_demo(torch.device("cpu"), steps=1, samples_per_class=3)
    student = demo_student_loader(samples_per_class=3)
    indices = np.arange(30)
    conds = one.conditions(indices, seed=0)
    assert conds == student.conditions(indices, seed=0)
    seeds = [sample_seed(0, int(i)) for i in indices]
    a, b = one.edit_inputs(seeds, conds), student.edit_inputs(seeds, conds)
    assert torch.equal(a["z"], b["z"]) and torch.equal(a["labels"], b["labels"])
    assert student.sigmas == one.sigmas == [80.0]
    with Recorder(student.root, {}, "mean") as rec:
        images = student.sample(seeds[:4], conds[:4], rec)
    assert images.shape == (4, 16, 16, 3)
    with pytest.raises(ValueError, match="1-step"):
        build_adapter("demo-student", steps=3)
