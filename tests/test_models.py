"""Tests for pipeline/models.py against a local HTTP server on 127.0.0.1 (no real network)."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vid2pair.pipeline import models
from vid2pair.pipeline.models import (
    ChecksumError,
    DownloadError,
    MissingWeightsError,
    WeightEntry,
    cli_models,
    default_cache_dir,
    fetch,
    models_add_subparser,
    presets_weights,
    resolve_weights,
    verify,
)

# --------------------------------------------------------------------------- server


class _State:
    def __init__(
        self,
        files: dict[str, bytes],
        honor_range: bool = True,
        drop_after: int | None = None,
        drops: int = 0,
        redirects: dict[str, str] | None = None,
    ):
        self.files = files
        self.honor_range = honor_range
        self.drop_after = drop_after  # bytes of body to send before cutting the connection
        self.drops = drops  # how many responses get cut
        self.redirects = redirects or {}
        self.bytes_served = 0
        self.requests: list[dict] = []  # path, range, status, auth
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        st: _State = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        rec = {"path": self.path, "range": rng, "auth": self.headers.get("Authorization")}
        with st.lock:
            st.requests.append(rec)
        if self.path in st.redirects:
            rec["status"] = 302
            self.send_response(302)
            self.send_header("Location", st.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = st.files.get(self.path)
        if data is None:
            rec["status"] = 404
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if st.honor_range and m:
            start = int(m.group(1))
            if start >= len(data):
                rec["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            rec["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            rec["status"] = 200
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if st.honor_range else "none")
        self.end_headers()
        with st.lock:
            cut = st.drop_after is not None and st.drops > 0
            if cut:
                st.drops -= 1
        if cut:
            part = body[: st.drop_after]
            with st.lock:  # counted before writing so the client can't outrun the count
                st.bytes_served += len(part)
            self.wfile.write(part)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        with st.lock:
            st.bytes_served += len(body)
        self.wfile.write(body)


@pytest.fixture
def serve():
    servers = []

    def start(files, **kw):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.state = _State(files, **kw)  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(httpd)
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        return base, httpd.state

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


PAYLOAD = os.urandom(300_000) + b"vid2pair-test-weights"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _entry(name="tiny", url="http://127.0.0.1:1/none", size=len(PAYLOAD), sha256=SHA, **kw):
    return WeightEntry(
        name=name, filename=f"{name}.pth", url=url, size=size, sha256=sha256, license="test", used_by="test: tiny", **kw
    )


@pytest.fixture
def reg():
    """A private registry, passed explicitly (``registry=``) to the functions under test."""
    return {}


FAST = dict(progress=False, backoff=0.0, timeout=10.0, chunk_size=16 * 1024)

# --------------------------------------------------------------------------- fetch


def test_fetch_downloads_and_verifies(serve, reg, tmp_path):
    base, st = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth")
    paths = fetch(["tiny"], tmp_path, **FAST, registry=reg)
    assert paths == [tmp_path / "tiny.pth"]
    assert hashlib.sha256(paths[0].read_bytes()).hexdigest() == SHA
    assert not (tmp_path / "tiny.pth.part").exists()
    assert st.bytes_served == len(PAYLOAD)
    # second call: already present and verified -> no request at all
    n = len(st.requests)
    assert fetch(["tiny"], tmp_path, **FAST, registry=reg) == paths
    assert len(st.requests) == n
    assert verify(["tiny"], tmp_path, registry=reg) == [("tiny", "ok")]


def test_fetch_with_progress_bar(serve, reg, tmp_path, capsys):
    base, _ = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth")
    fetch(["tiny"], tmp_path, progress=True, backoff=0.0, registry=reg)
    assert "tiny" in capsys.readouterr().err  # tqdm bar labelled with the entry
    assert verify(["tiny"], tmp_path, registry=reg) == [("tiny", "ok")]


def test_resume_from_existing_part_transfers_only_remainder(serve, reg, tmp_path):
    base, st = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth")
    k = 123_457
    (tmp_path / "tiny.pth.part").write_bytes(PAYLOAD[:k])
    (p,) = fetch(["tiny"], tmp_path, **FAST, registry=reg)
    assert p.read_bytes() == PAYLOAD
    assert st.bytes_served == len(PAYLOAD) - k
    assert [r["range"] for r in st.requests] == [f"bytes={k}-"]
    assert st.requests[0]["status"] == 206


def test_resume_after_dropped_connection(serve, reg, tmp_path):
    base, st = serve({"/w.pth": PAYLOAD}, drop_after=100_000, drops=1)
    reg["tiny"] = _entry(url=base + "/w.pth")
    (p,) = fetch(["tiny"], tmp_path, retries=3, **FAST, registry=reg)
    assert hashlib.sha256(p.read_bytes()).hexdigest() == SHA
    # the second request resumed where the first was cut: nothing sent twice
    assert st.bytes_served == len(PAYLOAD)
    assert [r["range"] for r in st.requests] == [None, "bytes=100000-"]


def test_dropped_connection_without_retries_keeps_part(serve, reg, tmp_path):
    base, st = serve({"/w.pth": PAYLOAD}, drop_after=50_000, drops=5)
    reg["tiny"] = _entry(url=base + "/w.pth")
    with pytest.raises(DownloadError, match="re-run the fetch to resume"):
        fetch(["tiny"], tmp_path, retries=1, **FAST, registry=reg)
    assert len(st.requests) == 2
    assert (tmp_path / "tiny.pth.part").stat().st_size == 100_000
    assert not (tmp_path / "tiny.pth").exists()
    st.drops = 0  # the network recovers: the next fetch finishes the file
    fetch(["tiny"], tmp_path, **FAST, registry=reg)
    assert (tmp_path / "tiny.pth").read_bytes() == PAYLOAD
    assert st.bytes_served == len(PAYLOAD)


def test_server_ignoring_range_restarts_from_zero(serve, reg, tmp_path):
    base, st = serve({"/w.pth": PAYLOAD}, honor_range=False)
    reg["tiny"] = _entry(url=base + "/w.pth")
    (tmp_path / "tiny.pth.part").write_bytes(PAYLOAD[:1000])
    (p,) = fetch(["tiny"], tmp_path, **FAST, registry=reg)
    assert p.read_bytes() == PAYLOAD  # not 1000 bytes duplicated at the front
    assert st.requests[0]["range"] == "bytes=1000-" and st.requests[0]["status"] == 200
    assert len(st.requests) == 1


def test_complete_part_is_verified_and_renamed_without_body(serve, reg, tmp_path):
    base, st = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth", size=None)  # size unknown -> server says 416
    (tmp_path / "tiny.pth.part").write_bytes(PAYLOAD)
    fetch(["tiny"], tmp_path, **FAST, registry=reg)
    assert (tmp_path / "tiny.pth").read_bytes() == PAYLOAD
    assert st.bytes_served == 0 and st.requests[0]["status"] == 416


def test_checksum_mismatch_deletes_part_and_raises(serve, reg, tmp_path):
    base, _ = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth", sha256="0" * 64)
    with pytest.raises(ChecksumError) as ei:
        fetch(["tiny"], tmp_path, **FAST, registry=reg)
    msg = str(ei.value)
    assert "sha256_mismatch" in msg and SHA in msg and "0" * 64 in msg
    assert not (tmp_path / "tiny.pth").exists()
    assert not (tmp_path / "tiny.pth.part").exists()


def test_corrupt_part_detected_after_resume(serve, reg, tmp_path):
    base, _ = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth")
    (tmp_path / "tiny.pth.part").write_bytes(b"\0" * 5000)  # wrong prefix bytes
    with pytest.raises(ChecksumError):
        fetch(["tiny"], tmp_path, **FAST, registry=reg)
    assert not (tmp_path / "tiny.pth.part").exists()
    assert not (tmp_path / "tiny.pth").exists()
    fetch(["tiny"], tmp_path, **FAST, registry=reg)  # a clean retry then succeeds
    assert verify(["tiny"], tmp_path, registry=reg) == [("tiny", "ok")]


def test_sha256_prefix_entry(serve, reg, tmp_path):
    base, _ = serve({"/w.pth": PAYLOAD})
    reg["pre"] = _entry("pre", url=base + "/w.pth", size=None, sha256=None, sha256_prefix=SHA[:8])
    reg["bad"] = _entry("bad", url=base + "/w.pth", size=None, sha256=None, sha256_prefix="deadbeef")
    fetch(["pre"], tmp_path, **FAST, registry=reg)
    assert verify(["pre"], tmp_path, registry=reg) == [("pre", "ok")]
    with pytest.raises(ChecksumError):
        fetch(["bad"], tmp_path, **FAST, registry=reg)


def test_http_404_is_not_retried(serve, reg, tmp_path):
    base, st = serve({})
    reg["tiny"] = _entry(url=base + "/missing.pth")
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(["tiny"], tmp_path, retries=3, **FAST, registry=reg)
    assert len(st.requests) == 1


def test_remote_size_differs_from_registry(serve, reg, tmp_path):
    base, st = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth", size=len(PAYLOAD) + 1)
    with pytest.raises(DownloadError, match="registry records"):
        fetch(["tiny"], tmp_path, **FAST, registry=reg)
    # refused on the headers alone: nothing written (the server may still have pushed
    # bytes into the socket buffer, so bytes_served is not asserted)
    assert len(st.requests) == 1
    assert not (tmp_path / "tiny.pth.part").exists() and not (tmp_path / "tiny.pth").exists()


def test_present_but_corrupt_file_is_redownloaded(serve, reg, tmp_path):
    base, _ = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth")
    (tmp_path / "tiny.pth").write_bytes(b"x" * len(PAYLOAD))
    assert verify(["tiny"], tmp_path, registry=reg) == [("tiny", "sha256_mismatch")]
    fetch(["tiny"], tmp_path, **FAST, registry=reg)
    assert verify(["tiny"], tmp_path, registry=reg) == [("tiny", "ok")]


def test_url_override_and_shared_file(serve, reg, tmp_path):
    base, st = serve({"/mirror.pth": PAYLOAD})
    reg["a"] = _entry("a", url="http://127.0.0.1:9/unreachable")
    # like sea_raft_l / sea_raft_m: two entries, one file
    reg["b"] = WeightEntry(**{**reg["a"].__dict__, "name": "b"})
    paths = fetch(["a", "b"], tmp_path, url_override={"a": base + "/mirror.pth"}, **FAST, registry=reg)
    assert paths == [tmp_path / "a.pth", tmp_path / "a.pth"]
    assert len(st.requests) == 1


def test_multi_file_entry(serve, reg, tmp_path):
    cfg = b'{"model_type": "dpt"}'
    base, _ = serve({"/repo/config.json": cfg, "/repo/sub/model.bin": PAYLOAD})
    reg["multi"] = WeightEntry(
        name="multi",
        filename="multi",
        url=base + "/repo",
        size=None,
        sha256=None,
        license="test",
        used_by="depth: test",
        files=(
            ("config.json", base + "/repo/config.json", len(cfg), None),
            ("sub/model.bin", base + "/repo/sub/model.bin", len(PAYLOAD), SHA),
        ),
    )
    with pytest.raises(MissingWeightsError):
        resolve_weights("multi", cache_dir=tmp_path, registry=reg)
    assert fetch(["multi"], tmp_path, **FAST, registry=reg) == [tmp_path / "multi"]
    assert (tmp_path / "multi" / "sub" / "model.bin").read_bytes() == PAYLOAD
    assert resolve_weights("multi", cache_dir=tmp_path, registry=reg) == tmp_path / "multi"
    # config.json has no digest -> the entry as a whole is honestly "unverified"
    assert verify(["multi"], tmp_path, registry=reg) == [("multi", "unverified (no sha256 recorded)")]
    (tmp_path / "multi" / "sub" / "model.bin").unlink()
    with pytest.raises(MissingWeightsError, match="model.bin"):
        resolve_weights("multi", cache_dir=tmp_path, registry=reg)
    assert verify(["multi"], tmp_path, registry=reg) == [("multi", "missing")]


def test_auth_header_not_forwarded_across_hosts(serve, reg, tmp_path, monkeypatch):
    base, st = serve({"/w.pth": PAYLOAD})
    port = base.rsplit(":", 1)[1]
    st.redirects["/same"] = "/w.pth"  # relative redirect, same host
    st.redirects["/other"] = f"http://localhost:{port}/w.pth"  # another host name
    monkeypatch.setattr(models, "_AUTH_HOSTS", ("127.0.0.1",))
    monkeypatch.setenv("HF_TOKEN", "secret")
    reg["same"] = _entry("same", url=base + "/same")
    reg["other"] = _entry("other", url=base + "/other")
    fetch(["same", "other"], tmp_path, **FAST, registry=reg)
    auth = [(r["path"], r["auth"]) for r in st.requests]
    assert auth == [
        ("/same", "Bearer secret"),
        ("/w.pth", "Bearer secret"),
        ("/other", "Bearer secret"),
        ("/w.pth", None),
    ]


# --------------------------------------------------------------------------- verify / resolve


def test_verify_statuses(reg, tmp_path):
    (tmp_path / "ok.pth").write_bytes(PAYLOAD)
    (tmp_path / "size.pth").write_bytes(PAYLOAD[:-1])
    (tmp_path / "sha.pth").write_bytes(PAYLOAD[::-1])
    (tmp_path / "unv.pth").write_bytes(PAYLOAD)
    reg.update(
        {
            "ok": _entry("ok"),
            "missing": _entry("missing"),
            "size": _entry("size"),
            "sha": _entry("sha"),
            "unv": _entry("unv", size=None, sha256=None),
        }
    )
    assert dict(verify(None, tmp_path, registry=reg)) == {
        "ok": "ok",
        "missing": "missing",
        "size": "size_mismatch",
        "sha": "sha256_mismatch",
        "unv": "unverified (no sha256 recorded)",
    }


def test_resolve_missing_message(reg, tmp_path):
    reg["tiny"] = _entry()
    with pytest.raises(MissingWeightsError) as ei:
        resolve_weights("tiny", cache_dir=tmp_path, config_key="flow.weights", registry=reg)
    msg = str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)
    assert str(tmp_path / "tiny.pth") in msg
    assert "vid2pair models fetch tiny" in msg
    assert "--cache-dir" in msg  # non-default cache -> the command says where
    assert "or pass a local path via flow.weights" in msg
    assert len(msg.splitlines()) <= 2


def test_resolve_present_wrong_size_and_ok(reg, tmp_path):
    reg["tiny"] = _entry()
    (tmp_path / "tiny.pth").write_bytes(PAYLOAD[:10])
    with pytest.raises(MissingWeightsError, match="wrong size"):
        resolve_weights("tiny", cache_dir=tmp_path, registry=reg)
    (tmp_path / "tiny.pth").write_bytes(PAYLOAD)
    assert resolve_weights("tiny", cache_dir=tmp_path, registry=reg) == tmp_path / "tiny.pth"


def test_resolve_explicit_path(reg, tmp_path):
    reg["tiny"] = _entry()
    f = tmp_path / "mine.pth"
    f.write_bytes(b"weights")
    assert resolve_weights("tiny", explicit=f, cache_dir=tmp_path / "empty", registry=reg) == f
    assert resolve_weights("tiny", explicit=str(f), registry=reg) == f
    missing = tmp_path / "nope.pth"
    with pytest.raises(MissingWeightsError) as ei:
        resolve_weights("tiny", explicit=missing, config_key="flow.weights", registry=reg)
    assert str(missing) in str(ei.value) and "flow.weights" in str(ei.value)


def test_resolve_unknown_name(reg):
    with pytest.raises(KeyError, match="unknown model weights"):
        resolve_weights("nope", registry=reg)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VID2PAIR_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VID2PAIR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "vid2pair" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_cache_dir() == tmp_path / "h" / ".cache" / "vid2pair" / "models"


def test_default_cache_used_by_resolve(monkeypatch, reg, tmp_path):
    monkeypatch.setenv("VID2PAIR_CACHE", str(tmp_path))
    reg["tiny"] = _entry()
    with pytest.raises(MissingWeightsError) as ei:
        resolve_weights("tiny", registry=reg)
    assert "`vid2pair models fetch tiny`" in str(ei.value)  # default cache: no --cache-dir


# --------------------------------------------------------------------------- presets


def test_presets_weights():
    """The cache entries a config needs come from the stages' declared needs: every enabled model
    backend, none for a disabled stage or a weight-free backend, none for an explicit local path."""
    from vid2pair.pipeline.config import load_config

    cfg = load_config(
        None,
        ["flow.backend=raft_large", "track.backend=cotracker3_online", "collage.segmenter=sam", "collage.depth=dpt"],
    )
    assert presets_weights(cfg) == ["raft_large", "cotracker3_online", "sam_vit_b", "dpt_hybrid_midas"]
    assert (
        presets_weights(
            load_config(
                None,
                [
                    "flow.backend=raft_large",
                    "flow.weights=/local/raft.pth",
                    "collage.enabled=false",
                    "track.backend=cotracker3_offline",
                    "track.enabled=false",
                ],
            )
        )
        == []
    )
    assert presets_weights(load_config("demo")) == []


def test_explicit_local_checkpoint_satisfies_the_preflight(tmp_path, monkeypatch):
    """Regression: --set track.backend=cotracker3_offline --set track.checkpoint=/local/file.pth
    used to demand the cache entry anyway; an explicit path now counts as present."""
    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.models import check_build_weights

    monkeypatch.setenv("VID2PAIR_CACHE", str(tmp_path / "empty-cache"))
    ck = tmp_path / "cotracker.pth"
    ck.write_bytes(b"x")
    base = ["track.backend=cotracker3_offline"]
    missing = check_build_weights(load_config("demo", base))
    assert len(missing) == 1 and "vid2pair models fetch cotracker3_offline" in missing[0], missing
    assert "track.checkpoint" in missing[0]  # names the key that takes a local path
    assert check_build_weights(load_config("demo", [*base, f"track.checkpoint={ck}"])) == []
    gone = check_build_weights(load_config("demo", [*base, f"track.checkpoint={tmp_path / 'nope.pth'}"]))
    assert len(gone) == 1 and gone[0].startswith("track.checkpoint:") and "does not exist" in gone[0]


# --------------------------------------------------------------------------- CLI


def _parse(argv, registry=None):
    ap = argparse.ArgumentParser(prog="vid2pair")
    sub = ap.add_subparsers(dest="command")
    models_add_subparser(sub)
    ns = ap.parse_args(argv)
    if registry is not None:
        ns.registry = registry
    return ns


def test_cli_list(reg, tmp_path, capsys):
    reg["tiny"] = _entry()
    reg["other"] = _entry("other", size=None, sha256=None, sha256_prefix="abcd1234", approx_size=5_000_000)
    (tmp_path / "tiny.pth").write_bytes(PAYLOAD)
    (tmp_path / "other.pth.part").write_bytes(b"x")
    ns = _parse(["models", "list", "--cache-dir", str(tmp_path)], reg)
    assert ns.func is cli_models
    assert ns.func(ns) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "used_by" in lines["name"] and "license" in lines["name"]
    assert re.search(r"\b0\.3\b.*\byes\b.*\bsha256\b", lines["tiny"])
    assert re.search(r"~5\.0.*\bpartial\b.*sha256-prefix", lines["other"])


def test_cli_list_real_registry(tmp_path, capsys):
    ns = _parse(["models", "--cache-dir", str(tmp_path), "list"])
    assert cli_models(ns) == 0
    out = capsys.readouterr().out
    for name in (
        "raft_small",
        "raft_large",
        "sea_raft_s",
        "sea_raft_m",
        "sea_raft_l",
        "cotracker3_offline",
        "cotracker3_online",
        "sam_vit_b",
        "sam_vit_l",
        "sam_vit_h",
        "dpt_hybrid_midas",
        "svd_xt_1_1",
    ):
        assert re.search(rf"^{name}\s.*\bno\b", out, re.M), name


def test_cli_fetch_and_verify(serve, reg, tmp_path, capsys):
    base, _ = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth")
    reg["raft_large"] = _entry("raft_large", url=base + "/w.pth")
    preset = tmp_path / "p.yaml"
    preset.write_text("flow:\n  backend: raft_large\n")
    cache = tmp_path / "cache"

    ns = _parse(["models", "verify", "tiny", "--cache-dir", str(cache)], reg)
    assert cli_models(ns) == 1  # explicitly asked for and missing
    assert re.search(r"^tiny\s+missing", capsys.readouterr().out, re.M)

    ns = _parse(["models", "fetch", "--preset", str(preset), "--no-progress", "--cache-dir", str(cache)], reg)
    assert cli_models(ns) == 0
    assert f"raft_large: {cache / 'raft_large.pth'}" in capsys.readouterr().out

    ns = _parse(["models", "verify", "--cache-dir", str(cache)], reg)
    assert cli_models(ns) == 0
    assert re.search(r"^raft_large\s+ok", capsys.readouterr().out, re.M)


def test_cli_fetch_errors(serve, reg, tmp_path, capsys):
    base, _ = serve({"/w.pth": PAYLOAD})
    reg["tiny"] = _entry(url=base + "/w.pth", sha256="1" * 64)
    assert cli_models(_parse(["models", "fetch", "--cache-dir", str(tmp_path)], reg)) == 2
    assert "nothing to fetch" in capsys.readouterr().err
    assert cli_models(_parse(["models", "fetch", "bogus", "--cache-dir", str(tmp_path)], reg)) == 2
    assert "unknown model weights: bogus" in capsys.readouterr().err
    ns = _parse(["models", "fetch", "tiny", "--no-progress", "--cache-dir", str(tmp_path)], reg)
    assert cli_models(ns) == 1
    assert "failed verification" in capsys.readouterr().err
    ns = _parse(
        ["models", "fetch", "tiny", "--no-progress", "--cache-dir", str(tmp_path), "--url", "tiny=" + base + "/nope"],
        reg,
    )
    assert cli_models(ns) == 1
    assert "HTTP 404" in capsys.readouterr().err


# --------------------------------------------------------------------------- registry facts


def test_registry_is_consistent():
    reg = models.REGISTRY
    expected = {
        "raft_small",
        "raft_large",
        "sea_raft_s",
        "sea_raft_m",
        "sea_raft_l",
        "cotracker3_offline",
        "cotracker3_online",
        "sam_vit_b",
        "sam_vit_l",
        "sam_vit_h",
        "dpt_hybrid_midas",
        "svd_xt_1_1",
    }
    assert expected <= set(reg)
    hexre = re.compile(r"[0-9a-f]{64}")
    for name, e in reg.items():
        assert e.name == name and e.license and e.used_by and e.source
        assert e.url.startswith("https://")
        if e.sha256:
            assert hexre.fullmatch(e.sha256), name
        if e.sha256_prefix:
            assert re.fullmatch(r"[0-9a-f]{8,}", e.sha256_prefix), name
            assert e.sha256 is None or e.sha256.startswith(e.sha256_prefix), name
            assert f"-{e.sha256_prefix}." in e.filename  # torch.hub naming convention
        if e.is_multi:
            assert e.filename == name
            for rel, url, _size, sha in e.files:
                assert url.startswith("https://") and url.endswith("/" + rel)
                assert sha is None or hexre.fullmatch(sha)
        else:
            assert e.url.rsplit("/", 1)[1] in (e.filename, e.filename.split("_", 1)[1]), name
    assert reg["sea_raft_l"].filename == reg["sea_raft_m"].filename
    assert reg["svd_xt_1_1"].gated


def test_hf_token_only_for_hf_hosts(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "tok")
    assert models._auth_headers("https://huggingface.co/a/b/resolve/main/x") == {"Authorization": "Bearer tok"}
    assert models._auth_headers("https://download.pytorch.org/models/x.pth") == {}
    assert models._auth_headers("https://evilhuggingface.co/x") == {}


def test_build_fails_fast_naming_missing_weights_and_extras(tmp_path, monkeypatch):
    """A preset whose weights are absent stops before any work (exit 2 from the CLI), naming the
    entry and the fetch command; with the check off, the pairs become recorded rejects instead."""
    import importlib.util

    from vid2pair.pipeline.cli import main
    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.models import check_build_weights
    from vid2pair.pipeline.synthetic import make_demo_corpus

    monkeypatch.setenv("VID2PAIR_CACHE", str(tmp_path / "empty-cache"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ptlflow" else real_find_spec(n, *a))
    cfg = load_config(
        "framepainter", ["collage.enabled=true", "collage.segmenter=sam", "collage.sam_checkpoint=/nowhere/sam.pth"]
    )
    problems = check_build_weights(cfg)
    assert any("'sea_raft_m'" in p and "vid2pair models fetch sea_raft_m" in p for p in problems), problems
    assert any("collage.sam_checkpoint: /nowhere/sam.pth does not exist" in p for p in problems), problems
    assert any("pip install 'vid2pair[sea-raft]'" in p for p in problems), problems
    assert check_build_weights(load_config("demo")) == []
    videos = tmp_path / "videos"
    make_demo_corpus(videos, n_static=1, n_moving_camera=0, seed=0, n_frames=144)  # 12 s: Δt up to 10 s
    out = tmp_path / "out"
    assert (
        main(
            [
                "build",
                "--config",
                "magicfixup",
                "--input",
                str(videos),
                "--output",
                str(out),
                "--runner",
                "local",
                "--no-progress",
            ]
        )
        == 2
    )
    assert not (out / "shards").exists()  # nothing was processed
    from vid2pair.pipeline.runners import build

    s = build(
        load_config(
            "magicfixup",
            [
                "runner.name=local",
                "runner.progress=false",
                "runner.check_weights=false",
                "track.enabled=false",
                "collage.enabled=false",
            ],
        ),
        str(videos),
        out,
        log_summary=False,
    )
    assert s["samples"] == 0 and s["rejects_by_stage"]["flow"].get("flow_backend_unavailable", 0) > 0
    assert s["all_inputs_accounted"]
