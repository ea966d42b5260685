"""How the client finds and reads kubeconfigs, and the small local state it keeps.

Everything here runs against files in a temporary directory: `$HOME`, `$HYPERMESH_HOME` and
`$KUBECONFIG` are pointed there so nothing reads or writes the real home directory.
"""

from __future__ import annotations

import base64
import os
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from hypermesh.client import (
    ClusterConfig,
    ConfigError,
    Resource,
    UnknownResource,
    kubeconfig_paths,
    load_config,
    localstate,
    read_kubeconfig,
    tickets,
    use_context,
)

CA = b"-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(
    *,
    clusters: dict[str, dict] | None = None,
    users: dict[str, dict] | None = None,
    contexts: dict[str, dict] | None = None,
    current: str | None = None,
) -> dict:
    doc: dict = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": k, "cluster": v} for k, v in (clusters or {}).items()],
        "users": [{"name": k, "user": v} for k, v in (users or {}).items()],
        "contexts": [{"name": k, "context": v} for k, v in (contexts or {}).items()],
    }
    if current is not None:
        doc["current-context"] = current
    return doc


def simple(
    server: str = "https://127.0.0.1:6443", *, name: str = "hm", namespace: str | None = None
) -> dict:
    context = {"cluster": name, "user": "admin"}
    if namespace:
        context["namespace"] = namespace
    return kubeconfig(
        clusters={name: {"server": server, "certificate-authority-data": b64(CA)}},
        users={"admin": {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)}},
        contexts={name: context},
        current=name,
    )


def write(path: Path, doc: dict | str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    path.chmod(mode)
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME and HYPERMESH_HOME; no $KUBECONFIG unless a test sets one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HYPERMESH_HOME", str(tmp_path / "hmhome"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return tmp_path


# Finding files


def test_search_order_honours_hypermesh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert kubeconfig_paths() == [
        tmp_path / "hmhome" / "admin.kubeconfig",
        tmp_path / "home" / ".kube" / "config",
    ]
    monkeypatch.setenv(
        "KUBECONFIG", f"{tmp_path}/a{os.pathsep}{tmp_path}/b{os.pathsep}{tmp_path}/a"
    )
    assert kubeconfig_paths() == [tmp_path / "a", tmp_path / "b"]
    assert kubeconfig_paths("~/x") == [tmp_path / "home" / "x"]


def test_default_prefers_hypermesh_admin_then_kube_config(tmp_path: Path) -> None:
    write(tmp_path / "home" / ".kube" / "config", simple("https://kube:1"))
    assert load_config().server == "https://kube:1"
    write(tmp_path / "hmhome" / "admin.kubeconfig", simple("https://hm:2"))
    config = load_config()
    assert config.server == "https://hm:2"
    assert config.source == tmp_path / "hmhome" / "admin.kubeconfig"


def test_embedded_data(tmp_path: Path) -> None:
    path = write(tmp_path / "k", simple(namespace="team"))
    config = load_config(str(path))
    assert config == ClusterConfig(
        server="https://127.0.0.1:6443",
        ca_pem=CA,
        cert_pem=CERT,
        key_pem=KEY,
        namespace="team",
        context="hm",
        cluster="hm",
        user="admin",
        source=path,
    )


def test_file_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    certs = tmp_path / "cfg" / "certs"
    certs.mkdir(parents=True)
    (certs / "ca.pem").write_bytes(CA)
    (certs / "admin.pem").write_bytes(CERT)
    (tmp_path / "abs-key.pem").write_bytes(KEY)
    doc = kubeconfig(
        clusters={
            "c": {
                "server": "https://h:1",
                "certificate-authority": "certs/ca.pem",
                "tls-server-name": "api.local",
            }
        },
        users={
            "u": {
                "client-certificate": "certs/admin.pem",
                "client-key": str(tmp_path / "abs-key.pem"),
            }
        },
        contexts={"x": {"cluster": "c", "user": "u"}},
        current="x",
    )
    config = load_config(str(write(tmp_path / "cfg" / "kubeconfig", doc)))
    assert (config.ca_pem, config.cert_pem, config.key_pem) == (CA, CERT, KEY)
    assert config.namespace == "default"
    assert config.tls_server_name == "api.local"


def test_kubeconfig_env_merges_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write(
        tmp_path / "one",
        kubeconfig(
            clusters={
                "shared": {"server": "https://first:1", "certificate-authority-data": b64(CA)}
            },
            current="from-two",
        ),
    )
    second = write(
        tmp_path / "two",
        kubeconfig(
            clusters={
                "shared": {"server": "https://second:2", "certificate-authority-data": b64(CA)},
                "other": {"server": "https://other:3", "certificate-authority-data": b64(CA)},
            },
            users={"u": {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)}},
            contexts={
                "from-two": {"cluster": "shared", "user": "u"},
                "o": {"cluster": "other", "user": "u"},
            },
            current="o",
        ),
    )
    missing = tmp_path / "missing"
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(missing), str(first), str(second)]))
    config = load_config()
    # current-context from the first file that sets one; the cluster entry of the first file too.
    assert (config.context, config.server, config.source) == ("from-two", "https://first:1", second)
    assert load_config(context="o").server == "https://other:3"

    path, merged = read_kubeconfig()
    assert path == first
    assert merged["current-context"] == "from-two"
    assert [c["name"] for c in merged["clusters"]] == ["shared", "other"]
    assert merged["clusters"][0]["cluster"]["server"] == "https://first:1"


def test_single_context_without_current_is_used(tmp_path: Path) -> None:
    doc = simple()
    del doc["current-context"]
    assert load_config(str(write(tmp_path / "k", doc))).context == "hm"


def test_user_without_certificate(tmp_path: Path) -> None:
    doc = simple()
    doc["users"][0]["user"] = {}
    config = load_config(str(write(tmp_path / "k", doc)))
    assert config.cert_pem is None and config.key_pem is None


# Errors that say how to fix them


def test_nothing_found_names_every_place_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert "no kubeconfig found" in message
    assert "$KUBECONFIG (unset)" in message
    assert str(tmp_path / "hmhome" / "admin.kubeconfig") in message
    assert str(tmp_path / "home" / ".kube" / "config") in message
    assert "make up" in message and "--kubeconfig" in message


def test_kubeconfig_env_with_no_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"\$KUBECONFIG .*nope.*make up"):
        load_config()


def test_explicit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"kubeconfig .*absent does not exist; check the --kubeconfig path"
    ):
        load_config(str(tmp_path / "absent"))


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read kubeconfig .*dir: Is a directory"):
        load_config(str(tmp_path / "dir"))
    if os.geteuid() == 0:
        return  # root reads files whatever their mode
    path = write(tmp_path / "k", simple(), mode=0o000)
    with pytest.raises(ConfigError, match="permission denied"):
        load_config(str(path))


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "k", "apiVersion: v1\nclusters:\n- name: a\n  cluster: {server: x\nusers: []\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "not valid YAML at line 5" in message


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping .* found a list"):
        load_config(str(write(tmp_path / "k", "- a\n- b\n")))


def test_unknown_context_lists_the_existing_ones(tmp_path: Path) -> None:
    doc = simple()
    doc["contexts"].append({"name": "alpha", "context": {"cluster": "hm", "user": "admin"}})
    path = write(tmp_path / "k", doc)
    with pytest.raises(ConfigError, match=r'context "prod" not found in .*\(contexts: alpha, hm\)'):
        load_config(str(path), context="prod")
    doc["current-context"] = "gone"
    with pytest.raises(ConfigError, match=r'current-context "gone" is not defined .*use-context'):
        load_config(str(write(tmp_path / "k", doc)))


def test_bad_base64_and_missing_files_are_named(tmp_path: Path) -> None:
    doc = simple()
    doc["users"][0]["user"]["client-key-data"] = "not base64!"
    with pytest.raises(ConfigError, match=r'user "admin": client-key-data is not valid base64'):
        load_config(str(write(tmp_path / "k", doc)))
    doc = simple()
    doc["clusters"][0]["cluster"] = {"server": "https://h:1", "certificate-authority": "ca.pem"}
    with pytest.raises(
        ConfigError, match=r'cluster "hm": certificate-authority .*ca.pem cannot be read'
    ):
        load_config(str(write(tmp_path / "k", doc)))


def test_dangling_references_and_bad_server(tmp_path: Path) -> None:
    doc = simple()
    doc["contexts"][0]["context"]["cluster"] = "elsewhere"
    with pytest.raises(
        ConfigError, match=r'names cluster "elsewhere", which is not defined \(clusters: hm\)'
    ):
        load_config(str(write(tmp_path / "k", doc)))
    doc = simple("http://127.0.0.1:6443")
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        load_config(str(write(tmp_path / "k", doc)))
    doc = simple()
    del doc["users"][0]["user"]["client-key-data"]
    with pytest.raises(ConfigError, match="client certificate but no key"):
        load_config(str(write(tmp_path / "k", doc)))


# Switching contexts


def test_use_context_edits_one_line_and_keeps_mode(tmp_path: Path) -> None:
    doc = simple()
    doc["contexts"].append(
        {"name": "other", "context": {"cluster": "hm", "user": "admin", "namespace": "x"}}
    )
    text = "# written by hand\n" + yaml.safe_dump(doc, sort_keys=False)
    path = write(tmp_path / "k", text, mode=0o600)
    assert use_context("other", str(path)) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    new = path.read_text()
    assert new.startswith("# written by hand\n")
    assert new.replace("current-context: other", "current-context: hm") == text
    assert load_config(str(path)).namespace == "x"
    with pytest.raises(ConfigError, match=r'context "nope" not found .*\(contexts: hm, other\)'):
        use_context("nope", str(path))


def test_use_context_rewrites_flow_style_and_keeps_mode(tmp_path: Path) -> None:
    doc = simple()
    doc["contexts"].append({"name": "two", "context": {"cluster": "hm"}})
    path = write(tmp_path / "k", yaml.safe_dump(doc, default_flow_style=True), mode=0o640)
    use_context("two", str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load_config(str(path)).context == "two"


def test_use_context_writes_the_first_kubeconfig_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write(tmp_path / "one", kubeconfig(current="hm"))
    second = write(tmp_path / "two", simple())
    second_text = second.read_text()
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{second}")
    doc = simple()
    doc["contexts"][0]["name"] = "alt"
    write(tmp_path / "three", doc)
    monkeypatch.setenv(
        "KUBECONFIG", os.pathsep.join(str(p) for p in (first, second, tmp_path / "three"))
    )
    use_context("alt")
    assert yaml.safe_load(first.read_text())["current-context"] == "alt"
    assert second.read_text() == second_text
    assert load_config().context == "alt"


# Local state: transport memory and session tickets


def test_transport_memory_expires_and_is_private(tmp_path: Path) -> None:
    memory = localstate.TransportMemory()
    server = "https://127.0.0.1:6443"
    assert not memory.h3_failed_recently(server)
    memory.remember_h3_failure(server, "timed out")
    assert memory.h3_failed_recently(server)
    assert not memory.h3_failed_recently("https://127.0.0.1:7000")
    assert memory.path == tmp_path / "hmhome" / "cache" / "transport.json"
    assert stat.S_IMODE(memory.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(memory.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "hmhome").stat().st_mode) == 0o700
    assert not localstate.TransportMemory(ttl=0.0).h3_failed_recently(server)
    memory.forget(server)
    assert not memory.h3_failed_recently(server)
    memory.path.write_text("{not json")
    assert not memory.h3_failed_recently(server)


def test_session_tickets_round_trip_privately(tmp_path: Path) -> None:
    from aioquic.tls import CipherSuite, SessionTicket

    now = datetime.now(UTC)
    ticket = SessionTicket(
        age_add=7,
        cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=now + timedelta(hours=1),
        not_valid_before=now - timedelta(seconds=1),
        resumption_secret=b"\x01" * 32,
        server_name="127.0.0.1",
        ticket=b"opaque",
        max_early_data_size=0xFFFFFFFF,
        other_extensions=[(42, b"x")],
    )
    store = tickets.TicketStore("https://127.0.0.1:6443")
    assert store.load() is None
    store.save(ticket)
    assert store.path.parent == tmp_path / "hmhome" / "quic-tickets"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert store.load() == ticket
    # Another server's store does not see it, and an expired ticket is not offered.
    assert tickets.TicketStore("https://127.0.0.1:7000").load() is None
    store.save(SessionTicket(**{**ticket.__dict__, "not_valid_after": now - timedelta(seconds=1)}))
    assert store.load() is None
    store.discard()
    assert not store.path.exists()
    store.path.write_text("garbage")
    assert store.load() is None


# Resources: paths and unknown names (no server needed)


WORKLOADS = Resource("hypermesh.io", "v1", "Workload", "workloads", "workload", True, ("wl",))
NAMESPACES = Resource("", "v1", "Namespace", "namespaces", "namespace", False, ("ns",))


def test_resource_paths() -> None:
    assert WORKLOADS.api_version == "hypermesh.io/v1"
    assert NAMESPACES.api_version == "v1"
    assert WORKLOADS.path() == "/apis/hypermesh.io/v1/workloads"
    assert WORKLOADS.path("team") == "/apis/hypermesh.io/v1/namespaces/team/workloads"
    assert (
        WORKLOADS.path("team", "web", "status")
        == "/apis/hypermesh.io/v1/namespaces/team/workloads/web/status"
    )
    assert NAMESPACES.path("ignored", "team") == "/api/v1/namespaces/team"
    with pytest.raises(ValueError):
        WORKLOADS.path(None, "web")
    with pytest.raises(ValueError):
        NAMESPACES.path(None, None, "status")


def test_unknown_resource_message() -> None:
    error = UnknownResource("wrkloads", ["workloads"])
    assert (
        str(error)
        == 'the server doesn\'t have a resource type "wrkloads"; did you mean "workloads"?'
    )
    assert str(UnknownResource("x", [])) == 'the server doesn\'t have a resource type "x"'
    assert str(UnknownResource("x", ["a", "b", "c"])).endswith('did you mean "a", "b" or "c"?')


def test_write_private_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "state" / "file.json"
    localstate.write_private(target, b"one")
    localstate.write_private(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]
    assert time.time() - target.stat().st_mtime < 60


def test_importing_the_client_is_light() -> None:
    """`nexus` starts on every command: the package must not pull in heavy libraries."""
    import subprocess
    import sys

    code = (
        "import sys, hypermesh.client\n"
        "heavy = {'aioquic', 'httpx', 'yaml', 'pydantic', 'ruamel', 'cryptography'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
