"""Bearer tokens → tenants: missing, malformed, wrong and another tenant's tokens."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from rlm.service import auth
from rlm.service.auth import Authenticator, bearer_token, metrics_allowed, token_hash
from rlm.service.settings import Tenant

ACME = Tenant("acme", hashlib.sha256(b"acme-secret").hexdigest(), ("rlm",))
GLOBEX = Tenant("globex", hashlib.sha256(b"globex-secret").hexdigest().upper(), ("rlm",))


def test_token_hash_is_the_hex_sha256_that_sha256sum_prints() -> None:
    assert token_hash("abc") == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_each_tenants_token_names_that_tenant_only() -> None:
    auth = Authenticator([ACME, GLOBEX])
    assert auth.tenant("Bearer acme-secret") is ACME
    assert auth.tenant("Bearer globex-secret") is GLOBEX  # an upper-case hash matches too
    assert auth.tenant("bearer acme-secret") is ACME  # the scheme is case-insensitive
    assert auth.tenant("  Bearer   acme-secret  ") is ACME
    # One tenant's token is never another's: each request is bound to its own.
    assert Authenticator([GLOBEX]).tenant("Bearer acme-secret") is None


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "acme-secret",
        "Basic YWNtZTphY21lLXNlY3JldA==",
        "Token acme-secret",
        "Bearer acme-secret extra",
        "Bearer acme-secre",
        "Bearer acme-secret\x00",
        "Bearer " + "x" * 10_000,
        "Bearer " + hashlib.sha256(b"acme-secret").hexdigest(),  # the hash is not the token
        "Bearer ação",
    ],
)
def test_a_missing_malformed_or_wrong_token_names_no_tenant(header: str | None) -> None:
    assert Authenticator([ACME, GLOBEX]).tenant(header) is None


def test_no_tenants_means_no_one_gets_in() -> None:
    assert Authenticator([]).tenant("Bearer acme-secret") is None


def test_every_tenants_hash_is_compared_even_after_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[bytes] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    tenants = [ACME, GLOBEX, Tenant("initech", token_hash("x"), ("rlm",))]
    assert Authenticator(tenants).tenant("Bearer acme-secret") is ACME
    assert len(compared) == 3
    compared.clear()
    assert Authenticator(tenants).tenant("Bearer nobody") is None
    assert len(compared) == 3


def test_bearer_token_takes_only_the_bearer_scheme() -> None:
    assert bearer_token("Bearer t0k.en-_~+/=") == "t0k.en-_~+/="
    assert bearer_token("Bearer a b") is None
    assert bearer_token("Bearer\ttab") is None


def test_metrics_are_open_without_a_metrics_token_and_closed_to_others_with_one() -> None:
    assert metrics_allowed(None, None)
    assert metrics_allowed("Bearer anything", None)
    digest = token_hash("operator")
    assert metrics_allowed("Bearer operator", digest)
    assert metrics_allowed("Bearer operator", digest.upper())
    assert not metrics_allowed(None, digest)
    assert not metrics_allowed("Bearer acme-secret", digest)
    assert not metrics_allowed("operator", digest)
