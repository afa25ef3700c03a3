"""`generate --store-as STUDENT`: a teacher's runs stored beside another student of the same network (an SDXL
teacher beside the 4-step SDXL student), on the tiny offline SDXL base of tests/t2i_fixtures.py; refused for a
model that is not a teacher and for a student of another network, in one line."""

from __future__ import annotations

import pytest

from pipeline.families import get_family
from store import Store
from tests.test_t2i_teacher import bases  # noqa: F401  (the tiny bases, a module fixture)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_the_registry_knows_where_each_teacher_may_be_stored():
    assert get_family("sdxl-teacher").student_keys() == ["sdxl", "sdxl-4step", "sdxl-4step-lora"]
    assert get_family("sd15-teacher").student_keys() == ["sd15"]
    assert get_family("demo-teacher").student_keys() == ["demo"]
    assert get_family("demo").student_keys() == [] and not get_family("demo-student").teacher


def test_an_sdxl_teacher_is_stored_beside_the_4_step_student(bases, tmp_path, capsys):  # noqa: F811
    from pipeline.__main__ import main

    store = tmp_path / "store"
    code = main(["generate", "--model", "sdxl-teacher", "--store-as", "sdxl-4step", "--base-model",
                 str(bases["sdxl"]), "--store", str(store), "--num-samples", "2", "--steps", "2", "--layers",
                 "midblock", "--device", "cpu", "--dtype", "float32", "--quiet"])
    assert code == 0, capsys.readouterr().err
    st = Store(store)
    assert st.models() == ["sdxl-4step"] and st.layers("sdxl-4step") == ["midblock"]
    (run,) = st.runs()["run_id"]
    settings = st.manifest(run)["settings"]
    assert settings["kind"] == "teacher" and settings["model_family"] == "sdxl-teacher"
    assert st.run_kinds() == {run: "teacher"}


@pytest.mark.parametrize("model, store_as, words", [
    ("sdxl-teacher", "sd15", "--store-as sd15: sdxl-teacher can be stored beside sdxl, sdxl-4step, sdxl-4step-lora"),
    ("demo-teacher", "imagenet", "--store-as imagenet: demo-teacher can be stored beside demo"),
    ("demo", "sdxl", "--store-as applies to the teachers (demo-teacher, imagenet-teacher, sd15-teacher, "
                     "sdxl-teacher), not to demo"),
    ("sdxl-4step", "sdxl", "not to sdxl-4step"),
])
def test_a_model_that_is_no_teacher_or_another_network_is_refused(tmp_path, capsys, model, store_as, words):
    from pipeline.__main__ import main

    code = main(["generate", "--model", model, "--store-as", store_as, "--store", str(tmp_path / "s"),
                 "--num-samples", "1", "--device", "cpu", "--quiet", "--base-model", str(tmp_path / "nowhere")])
    assert code == 2
    assert words in _one_line_error(capsys)
    assert not (tmp_path / "s").exists()
