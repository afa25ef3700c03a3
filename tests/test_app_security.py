"""Issue 12, items 2-5 as the app meets them: damaged parts are reported, a store swapped for a link out of
the allowed folders is refused on the next access, static files live under names that cannot be computed
from a path (and only for stores the server opens), and the server binds to localhost unless told otherwise."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests import app_fixtures as fx
from tests.app_fixtures import app_test

app_store = fx.app_store  # pytest fixtures
app_env = fx.app_env

ROOT = Path(__file__).resolve().parents[1]
OVERVIEW = "app_pages/overview.py"


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [w.value for w in at.warning] + [c.value for c in at.code]
    return "\n".join(str(p) for p in parts)


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def _damage_samples_part(store: Path) -> Path:
    """Flip one byte of a samples part's pages (footer intact) where the part still decodes without error,
    to other values: the silent kind of damage that page checksums exist for."""
    part = sorted((store / "samples/model=digits/run_id=digits-b").glob("part-*.parquet"))[0]
    good = part.read_bytes()
    table = pq.read_table(part)
    footer = len(good) - 8 - int.from_bytes(good[-8:-4], "little")
    for at in range(footer // 2, footer):
        data = bytearray(good)
        data[at] ^= 0x01
        part.write_bytes(bytes(data))
        try:
            changed = not pq.read_table(part).equals(table)
        except Exception:  # noqa: BLE001 - this byte breaks decoding: not the silent kind
            continue
        if changed:
            return part
    pytest.fail("no silent one-byte change found")


# -- item 2: a damaged samples part is skipped and the pages say so ------------------------------------------

def test_damaged_samples_part_is_reported_on_overview_and_explore(app_env, app_store, tmp_path):
    store = tmp_path / "damaged"
    shutil.copytree(app_store, store)
    part = _damage_samples_part(store)

    at = app_test(OVERVIEW, query={"store": str(store)})
    assert not at.exception
    assert any("corrupt part" in w.value for w in at.warning)
    assert str(part) in _texts(at)
    assert _metrics(at)["Samples"] == "168"  # 228 less the 60 samples of the damaged part

    at = app_test(query={"store": str(store), "model": "digits"})  # Explore, the map page
    assert not at.exception
    assert any("corrupt part" in w.value for w in at.warning)


# -- item 3: a folder swapped for a link after it was opened ---------------------------------------------------

def test_a_store_swapped_for_a_link_out_of_the_roots_is_refused(app_env, app_store, tmp_path, monkeypatch):
    from app import data

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    shutil.copytree(app_store, allowed / "copy")
    shutil.copytree(app_store, outside / "other")
    shutil.rmtree(outside / "other/samples/model=words")  # tell the stores apart: 180 samples, 1 model
    monkeypatch.setenv("DMD2VIZ_STORE_ROOTS", str(allowed))

    at = app_test(OVERVIEW)
    at.text_input(key="dmd_store_input").set_value(str(allowed / "copy")).run()
    assert not at.exception, [e.stack for e in at.exception]
    assert _metrics(at)["Samples"] == "228"
    assert f"Store `{allowed / 'copy'}`" in _texts(at)

    # the allowed folder is replaced by a link to a store outside the roots, in the same session
    (allowed / "copy").rename(tmp_path / "moved")
    (allowed / "copy").symlink_to(outside / "other")
    time.sleep(data.VERSION_TTL_S + 0.2)  # past the data-version cache: a new version is read from disk
    at.run()
    assert not at.exception, [e.stack for e in at.exception]
    assert any("Not opened" in c.value and str(allowed / "copy") in c.value for c in at.sidebar.caption)
    assert _metrics(at)["Samples"] == "228" and _metrics(at)["Models"] == "2"  # the default store, not outside
    assert str(outside) not in _texts(at)
    at.switch_page("app_pages/explore.py").run()  # Explore too
    assert not at.exception, [e.stack for e in at.exception]
    assert str(outside) not in _texts(at)


# -- item 4: static files under names that cannot be computed, for allowed stores only ------------------------

def _fresh_secret(monkeypatch, static: Path):
    from app import static_files

    monkeypatch.setattr(static_files, "STATIC_DIR", static)
    monkeypatch.setattr(static_files, "_secrets", {})
    return static_files


def test_store_key_cannot_be_computed_from_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("DMD2VIZ_STORE_ROOTS", raising=False)
    sf = _fresh_secret(monkeypatch, tmp_path / "a" / "static")
    store = tmp_path / "store"
    store.mkdir()
    key = sf.store_key(store)
    legacy = hashlib.sha1(str(store.resolve()).encode()).hexdigest()
    assert len(key) == 32 and int(key, 16) >= 0 and not legacy.startswith(key[:12]) and key[:12] != legacy[:12]
    assert sf.store_key(str(store)) == key == sf.store_key(tmp_path / "." / "store")  # stable, by resolved path
    secret = tmp_path / "a" / sf.SECRET_NAME
    assert secret.is_file() and (secret.stat().st_mode & 0o077) == 0  # beside static/, not inside; 0600
    assert not any(p.name == sf.SECRET_NAME for p in (tmp_path / "a" / "static").rglob("*"))
    monkeypatch.setattr(sf, "_secrets", {})
    assert sf.store_key(store) == key  # another process of the same installation: the same folders
    sf = _fresh_secret(monkeypatch, tmp_path / "b" / "static")
    assert sf.store_key(store) != key  # another installation: another secret


def test_refused_stores_get_no_static_files(tmp_path, monkeypatch):
    sf = _fresh_secret(monkeypatch, tmp_path / "static")
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "s").mkdir(parents=True)
    (outside / "s").mkdir(parents=True)
    (allowed / "link").symlink_to(outside / "s")
    monkeypatch.setenv("DMD2VIZ_STORE_ROOTS", str(allowed))
    monkeypatch.setenv("DMD2VIZ_STORE", str(tmp_path / "default"))
    assert sf.store_key(allowed / "s")
    for refused in (outside / "s", allowed / "link"):
        with pytest.raises(sf.StoreRefused):
            sf.store_key(refused)


def test_old_computable_folders_are_deleted(tmp_path, monkeypatch):
    sf = _fresh_secret(monkeypatch, tmp_path / "static")
    old, recent = "0123456789ab", "ba9876543210"
    for sub in ("thumbs", "views"):
        for name in (old, recent):
            (tmp_path / "static" / sub / name).mkdir(parents=True)
            (tmp_path / "static" / sub / name / "x").write_bytes(b"x")
        long_ago = time.time() - 3600
        os.utime(tmp_path / "static" / sub / old, (long_ago, long_ago))
    sf.store_key(tmp_path)
    for sub in ("thumbs", "views"):
        assert not (tmp_path / "static" / sub / old).exists()
        assert (tmp_path / "static" / sub / recent).exists()  # maybe a running server of the old code: later


def test_exported_thumbnails_live_under_the_secret_key_only(app_env, app_store, tmp_path):
    from app import static_files

    at = app_test(OVERVIEW)
    assert not at.exception and at.image
    key = static_files.store_key(app_store)
    folders = [p.name for p in (tmp_path / "static" / "thumbs").iterdir()]
    assert folders == [key]
    legacy = hashlib.sha1(str(app_store.resolve()).encode()).hexdigest()[:12]
    assert not (tmp_path / "static" / "thumbs" / legacy).exists()
    assert all(f"/thumbs/{key}/" in str(img.proto.imgs[0].url) for img in at.image)


def test_thumbnail_export_stops_when_the_store_is_swapped_for_a_link(tmp_path, monkeypatch):
    """The exporter of a store checks before each batch that its folder is still the one it was made for:
    swapped for a link out of the roots, nothing more is written (not even under the allowed store's name)."""
    sf = _fresh_secret(monkeypatch, tmp_path / "static")
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "copy").mkdir(parents=True)
    (outside / "other").mkdir(parents=True)
    monkeypatch.setenv("DMD2VIZ_STORE_ROOTS", str(allowed))
    monkeypatch.setenv("DMD2VIZ_STORE", str(tmp_path / "default"))
    export = sf.ThumbExport(sf.store_key(allowed / "copy"), lambda ids: [b"RIFFwebp" for _ in ids])
    assert export.ensure(["a"]) == 1 and export.error is None
    (allowed / "copy").rename(tmp_path / "moved")
    (allowed / "copy").symlink_to(outside / "other")
    export.ensure(["b"])
    assert not (export.folder / "b.webp").exists() and "no longer allowed" in export.error
    export.request(["c"], wait=True)
    assert not (export.folder / "c.webp").exists()


# -- item 5: localhost by default ----------------------------------------------------------------------------

def test_config_binds_to_localhost_and_docs_say_how_to_open_it():
    config = tomllib.loads((ROOT / ".streamlit/config.toml").read_text())
    assert config["server"]["address"] in ("127.0.0.1", "localhost")
    docs = (ROOT / "docs/app.md").read_text()
    deployment = docs[docs.index("## Deployment"):]
    deployment = deployment[:deployment.index("\n## ", 1)]
    assert "--server.address 0.0.0.0" in deployment
    assert "DMD2VIZ_STORE_ROOTS" in deployment and "[auth]" in deployment


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net shows them) of the sockets listening on `port`."""
    out = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                out.append(addr)
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
def test_server_started_with_the_repository_config_listens_on_loopback_only(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DMD2VIZ_STORE=str(tmp_path / "none"), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py",
                             "--server.port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("the server did not start")
        addrs = _listening(port)
        loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
        assert addrs and set(addrs) <= loopback, addrs
    finally:
        proc.terminate()
        proc.wait(timeout=20)
