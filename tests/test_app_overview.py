"""AppTest: the Overview page and the store handling every page shares (missing, empty, corrupt, switching)."""

from __future__ import annotations

from tests import app_fixtures as fx
from tests.app_fixtures import app_test

app_store = fx.app_store  # pytest fixtures
app_env = fx.app_env

OVERVIEW = "app_pages/overview.py"


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [w.value for w in at.warning] + [c.value for c in at.code]
    return "\n".join(str(p) for p in parts)


def test_overview_shows_store_runs_models_and_grid(app_env, app_store):
    at = app_test(OVERVIEW)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Models"] == "2"
    assert metrics["Runs"] == "3"
    assert metrics["Samples"] == "228"  # 120 + 60 + 48
    runs = at.dataframe[0].value
    assert sorted(runs["run"]) == ["digits-a", "digits-b", "words-a"]
    assert set(runs["status"]) == {"complete"}
    text = _texts(at)
    assert str(app_store) in text
    # the grid: one block per class of the first model, in class order
    assert "**zero** · 18 samples" in text and "**nine** · 18 samples" in text
    assert text.index("**zero**") < text.index("**one**") < text.index("**nine**")
    # layers with their steps and sizes
    layer_tables = [d.value for d in at.dataframe if "layer" in d.value.columns and "steps" in d.value.columns]
    digits_layers = layer_tables[0]
    assert list(digits_layers["layer"]) == ["encoder_bottleneck", "midblock"]
    assert set(digits_layers["steps"]) == {3}


def test_overview_grid_switches_model_and_pages(app_env):
    at = app_test(OVERVIEW)
    at.selectbox(key="overview_grid_model").set_value("words").run()
    assert not at.exception
    text = _texts(at)
    assert "**animals**" in text and "**vehicles**" in text and "**food**" in text
    manifest = at.selectbox(key="overview_manifest_run")
    manifest.set_value("words-a").run()
    assert not at.exception
    assert any("words-a" in e.label for e in at.expander)


def test_missing_non_default_store_shows_commands_not_a_traceback(app_env, tmp_path):
    at = app_test(OVERVIEW)
    at.text_input(key="dmd_store_input").set_value(str(tmp_path / "nowhere")).run()
    assert not at.exception
    text = _texts(at)
    assert "does not exist" in text
    assert f"python -m pipeline demo --store {tmp_path / 'nowhere'}" in text


def test_empty_store_shows_commands_on_every_page(app_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for page in (OVERVIEW, "app_pages/explore.py"):
        at = app_test(page)
        at.text_input(key="dmd_store_input").set_value(str(empty)).run()
        assert not at.exception
        assert "holds no samples yet" in _texts(at)
        assert "python -m pipeline demo" in _texts(at)


def test_corrupt_part_is_reported_and_skipped(app_env, app_store, tmp_path):
    import shutil

    store = tmp_path / "corrupt"
    shutil.copytree(app_store, store)
    bad = store / "activations/model=digits/layer=midblock/run_id=digits-a/part-00000000-00000099.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    at = app_test(OVERVIEW)
    at.text_input(key="dmd_store_input").set_value(str(store)).run()
    assert not at.exception
    assert any("corrupt part" in w.value for w in at.warning)
    assert str(bad) in _texts(at)
    assert {m.label: m.value for m in at.metric}["Samples"] == "228"  # the samples themselves are fine


def test_default_store_missing_builds_the_demo_store_in_the_background(app_env, monkeypatch, tmp_path):
    """A fresh clone: the default store does not exist, so the app builds the demo store itself."""
    import time

    from app import ui
    from tests.app_fixtures import build_app_store

    target = tmp_path / "data"
    monkeypatch.setenv("DMD2VIZ_STORE", str(target))

    def fake_build(path, progress=False, on_batch=None, on_map=None):
        for i in range(1, 4):
            time.sleep(0.05)
            on_batch(i * 10, 30)
        build_app_store(path)
        on_map(0, 1, "midblock")
        return ["digits-a", "digits-b", "words-a"]

    monkeypatch.setattr(ui, "_demo_builder", lambda: fake_build)
    at = app_test(OVERVIEW)
    assert not at.exception
    assert any("Building the demo store" in h.value for h in at.subheader)
    build = ui.demo_build()
    deadline = time.time() + 30
    while not build.finished and time.time() < deadline:
        time.sleep(0.05)
    assert build.finished and build.error is None
    at.run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Models"] == "2"


def test_login_is_required_when_auth_is_configured(app_env):
    from streamlit.testing.v1 import AppTest

    from tests.app_fixtures import ENTRY

    at = AppTest.from_file(ENTRY, default_timeout=60)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "id", "client_secret": "secret",
                          "server_metadata_url": "https://login.example.com/.well-known/openid-configuration"}
    at.run()
    assert not at.exception
    assert any("requires you to sign in" in i.value for i in at.info)
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.get("bidi_component") and not at.metric  # nothing of the store is shown


def test_no_login_without_auth_settings(app_env):
    at = app_test()
    assert not at.exception and not any("sign in" in i.value for i in at.info)
    assert at.get("bidi_component")


def test_overview_removes_stale_caches(tmp_path, monkeypatch):
    from pipeline.project import ProjectionParams, Projector
    from store import Store
    from tests.feature_fixtures import write_clustered_run

    params = ProjectionParams(feature="full+pca5", n_neighbors=10, min_dist=0.1)
    write_clustered_run(tmp_path, range(120))
    Projector().project(Store(tmp_path), "demo", "mid", 0, params)
    write_clustered_run(tmp_path, range(120, 180))
    Projector().project(Store(tmp_path), "demo", "mid", 0, params, refit=True)
    stale = [f for f in Store(tmp_path).derived.scan() if f.stale]
    assert len(stale) == 4
    with fx.app_pointed_at(tmp_path, monkeypatch, tmp_path / "app"):
        at = app_test(OVERVIEW)
        assert not at.exception
        assert "4 cache files" in _texts(at) and "changed since" in _texts(at)
        at.button(key="prune_caches").click().run()
        assert not at.exception
        assert not any(f.path.exists() for f in stale) and not [f for f in Store(tmp_path).derived.scan() if f.stale]
        assert any("Removed 4 stale cache files" in s.value for s in at.success)
        assert "changed since" not in _texts(at)
        kinds = next(d.value for d in at.dataframe if "kind" in d.value.columns)
        assert int(kinds.set_index("kind").loc["caches", "files"]) == 9 - 4  # the table is current
        # this store was written without images: the grid says so instead of showing broken images
        assert "stored without images" in _texts(at) and not at.image


def test_store_roots_limit_which_folders_users_open(app_env, app_store, tmp_path, monkeypatch):
    """`DMD2VIZ_STORE_ROOTS`: the sidebar and `?store=` open stores under those folders only (links resolved)."""
    import shutil

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    shutil.copytree(app_store, allowed / "copy")
    shutil.copytree(app_store, outside / "copy")
    (allowed / "escape").symlink_to(outside / "copy")
    monkeypatch.setenv("DMD2VIZ_STORE_ROOTS", str(allowed))

    at = app_test(OVERVIEW)
    at.text_input(key="dmd_store_input").set_value(str(allowed / "copy")).run()
    assert not at.exception and str(allowed / "copy") in _texts(at)
    for refused in (outside / "copy", allowed / "escape"):
        at.text_input(key="dmd_store_input").set_value(str(refused)).run()
        assert not at.exception
        assert any("outside the folders this server opens stores from" in c.value for c in at.sidebar.caption)
        assert f"Store `{allowed / 'copy'}`" in _texts(at)  # still the allowed store

    at = app_test(OVERVIEW, query={"store": str(outside / "copy")})
    assert not at.exception
    assert any("Not opened" in c.value for c in at.sidebar.caption)
    assert str(outside) not in "\n".join(c.value for c in at.caption if "Store `" in c.value)
    at = app_test(OVERVIEW, query={"store": str(allowed / "copy")})
    assert f"Store `{(allowed / 'copy').resolve()}`" in _texts(at) and not any(
        "Not opened" in c.value for c in at.sidebar.caption)
