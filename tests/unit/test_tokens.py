"""Bootstrap tokens: their format, their Secrets, expiry, and the API server's authenticator."""

from __future__ import annotations

import asyncio
import base64
import datetime
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from hypermesh.api import tokens
from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient, InProcessTransport, read_all
from hypermesh.client.resources import Resource
from hypermesh.pki import Identity, bootstraptoken
from hypermesh.pki.bootstraptoken import BootstrapToken, StoredToken, TokenFormatError
from hypermesh.store.memory import MemoryStore

SECRETS = Resource(group="", version="v1", kind="Secret", plural="secrets", singular="secret", namespaced=True)
ADMIN = Identity("admin", ("system:masters",))
NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


# -- the format --------------------------------------------------------------------------------


def test_generated_tokens_parse_back_and_differ() -> None:
    seen = set()
    for _ in range(50):
        token = BootstrapToken.generate()
        assert BootstrapToken.parse(str(token)) == token
        assert len(token.id) == 6 and len(token.secret) == 16
        assert token.user == f"system:bootstrap:{token.id}"
        assert token.secret_name == f"bootstrap-token-{token.id}"
        seen.add(str(token))
    assert len(seen) == 50


def test_the_secret_half_never_shows_in_repr() -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef")
    assert "0123456789abcdef" not in repr(token)
    assert "abcdef" in repr(token)


@pytest.mark.parametrize(
    "text",
    ["", "abcdef", "abcdef.", "abcdef.0123456789abcde", "abcdef.0123456789abcdefg", "ABCDEF.0123456789abcdef",
     "abcde.0123456789abcdef0", "abcdef:0123456789abcdef", "abc def.0123456789abcdef"],
)  # fmt: skip
def test_malformed_tokens_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(TokenFormatError) as caught:
        BootstrapToken.parse(text)
    assert "<id>.<secret>" in str(caught.value)
    if text:
        assert text not in str(caught.value)


def test_surrounding_whitespace_is_forgiven() -> None:
    assert BootstrapToken.parse("  abcdef.0123456789abcdef\n") == BootstrapToken("abcdef", "0123456789abcdef")


# -- the Secret --------------------------------------------------------------------------------


def stored(token: BootstrapToken, **kwargs: Any) -> StoredToken:
    found = bootstraptoken.from_secret(bootstraptoken.secret_manifest(token, **kwargs))
    assert found is not None
    return found


def test_secret_manifest_has_kubernetes_shape() -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef")
    secret = bootstraptoken.secret_manifest(token, expires=NOW, description="rack 4", extra_groups=("system:bootstrappers:rack4",))
    assert secret["metadata"] == {"name": "bootstrap-token-abcdef", "namespace": "kube-system"}
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "token-id": "abcdef", "token-secret": "0123456789abcdef", "usage-bootstrap-authentication": "true",
        "expiration": "2030-01-02T03:04:05Z", "description": "rack 4", "auth-extra-groups": "system:bootstrappers:rack4",
    }  # fmt: skip


def test_stored_token_round_trip() -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef")
    found = stored(token, expires=NOW, extra_groups=("system:bootstrappers:rack4",))
    assert (found.id, found.expires, found.problem) == ("abcdef", NOW, "")
    assert found.groups == ("system:bootstrappers", "system:bootstrappers:rack4")
    assert found.usages == ("authentication",)


def test_expiry() -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef")
    found = stored(token, expires=NOW)
    assert found.accepts(token.secret, NOW - datetime.timedelta(seconds=1))
    assert not found.accepts(token.secret, NOW)
    assert not found.accepts(token.secret, NOW + datetime.timedelta(days=1))
    forever = stored(token, expires=None)
    assert forever.accepts(token.secret, NOW + datetime.timedelta(days=3650))


def test_only_the_exact_secret_is_accepted() -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef")
    found = stored(token, expires=None)
    assert found.accepts("0123456789abcdef", NOW)
    # A mismatch anywhere, a prefix, a longer value, non-ASCII: all refused, none raises.
    for position in range(16):
        wrong = token.secret[:position] + ("x" if token.secret[position] != "x" else "y") + token.secret[position + 1:]
        assert not found.accepts(wrong, NOW)
    for wrong in ("", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeé"):
        assert not found.accepts(wrong, NOW)


def test_extra_groups_must_stay_among_bootstrappers() -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef")
    with pytest.raises(ValueError, match="system:bootstrappers"):
        bootstraptoken.secret_manifest(token, expires=None, extra_groups=("system:masters",))
    # A hand-written Secret asking for more is unusable, not quietly narrowed.
    secret = bootstraptoken.secret_manifest(token, expires=None)
    secret["data"]["auth-extra-groups"] = base64.b64encode(b"system:masters").decode()
    found = bootstraptoken.from_secret(secret)
    assert found is not None and "auth-extra-groups" in found.problem
    assert not found.accepts(token.secret, NOW)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s["data"].update({"token-id": base64.b64encode(b"zzzzzz").decode()}), "does not match"),
        (lambda s: s["data"].pop("usage-bootstrap-authentication"), "usage-bootstrap-authentication"),
        (lambda s: s["data"].update({"expiration": base64.b64encode(b"tomorrow").decode()}), "expiration"),
        (lambda s: s["metadata"].update({"deletionTimestamp": "2030-01-01T00:00:00Z"}), "deleted"),
    ],
)
def test_broken_token_secrets_authenticate_nobody(change: Any, problem: str) -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef")
    secret = bootstraptoken.secret_manifest(token, expires=None)
    change(secret)
    found = bootstraptoken.from_secret(secret)
    assert found is not None and problem in found.problem
    assert not found.accepts(token.secret, NOW)


def test_other_secrets_are_not_tokens() -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef")
    for change in ({"type": "Opaque"}, {"metadata": {"name": "bootstrap-token-abcdef", "namespace": "default"}},
                   {"metadata": {"name": "abcdef", "namespace": "kube-system"}}):  # fmt: skip
        secret = {**bootstraptoken.secret_manifest(token, expires=None), **change}
        assert bootstraptoken.from_secret(secret) is None


def test_bearer_header_parsing() -> None:
    assert tokens.bearer_token("Bearer abc.def") == "abc.def"
    assert tokens.bearer_token("bearer   abc.def ") == "abc.def"
    assert tokens.bearer_token("Basic YWxhZGRpbjpvcGVuc2VzYW1l") is None
    assert tokens.bearer_token("Bearer") is None
    assert tokens.bearer_token(None) is None


# -- the authenticator in the API server -------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[APIServer]:
    app = APIServer(MemoryStore())
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def make_token(server: APIServer, *, expires: datetime.datetime | None) -> BootstrapToken:
    token = BootstrapToken.generate()
    admin = AsyncClient.in_process(server, ADMIN)
    await admin.create(SECRETS, bootstraptoken.secret_manifest(token, expires=expires))
    return token


async def call(server: APIServer, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
    """One GET with no client certificate, as a joining node makes it."""
    transport = InProcessTransport(server, None)
    headers = [("Authorization", authorization)] if authorization else []
    response = await transport.open("GET", path, headers, b"")
    return response.status, orjson.loads(await read_all(response))


CSRS_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


async def test_a_valid_token_authenticates_as_a_bootstrapper(server: APIServer) -> None:
    token = await make_token(server, expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    identity = await server.tokens.authenticate(f"Bearer {token}")
    assert identity == Identity(f"system:bootstrap:{token.id}", ("system:bootstrappers",))
    # Through the app: the bootstrapper may read certificate requests and nothing else.
    status, body = await call(server, CSRS_PATH, f"Bearer {token}")
    assert status == 200, body
    status, body = await call(server, "/api/v1/namespaces", f"Bearer {token}")
    assert status == 403 and f"system:bootstrap:{token.id}" in body["message"]


async def test_bad_tokens_get_401_and_are_never_echoed(server: APIServer) -> None:
    expired = await make_token(server, expires=datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1))
    good = await make_token(server, expires=None)
    unknown = BootstrapToken.generate()
    wrong_secret = BootstrapToken(good.id, "x" * 16)
    for header in (f"Bearer {expired}", f"Bearer {unknown}", f"Bearer {wrong_secret}", "Bearer not-a-token", None):
        status, body = await call(server, CSRS_PATH, header)
        assert status == 401, (header, body)
        assert body["reason"] == "Unauthorized"
        for token in (expired, unknown, wrong_secret):
            assert token.secret not in orjson.dumps(body).decode()


async def test_deleting_the_secret_revokes_the_token(server: APIServer) -> None:
    token = await make_token(server, expires=None)
    assert await server.tokens.authenticate(f"Bearer {token}") is not None
    admin = AsyncClient.in_process(server, ADMIN)
    await admin.delete(SECRETS, token.secret_name, "kube-system")
    # The index follows the Secrets' watch: the token stops working with the delete's event.
    for _ in range(100):
        if await server.tokens.authenticate(f"Bearer {token}") is None:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the deleted token still authenticates")


async def test_a_token_written_a_moment_ago_works_at_once(server: APIServer) -> None:
    # No wait for the index to catch up: an unknown id is looked up in the store.
    token = await make_token(server, expires=None)
    server.tokens._tokens.clear()
    assert await server.tokens.authenticate(f"Bearer {token}") is not None


async def test_a_client_certificate_wins_over_a_token(server: APIServer) -> None:
    token = await make_token(server, expires=None)
    transport = InProcessTransport(server, Identity("alice"))
    response = await transport.open("GET", CSRS_PATH, [("Authorization", f"Bearer {token}")], b"")
    body = orjson.loads(await read_all(response))
    # alice is bound to nothing; the token's rights are not added to hers.
    assert response.status == 403 and 'User "alice"' in body["message"]
