"""The principals file, ``require`` and ``current_principal``, and the loopback check."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from service.api.access import (
    IDENTITY_GRAPH_VIEW,
    InsecureBindError,
    Principal,
    PrincipalsFileError,
    check_bind_address,
    current_principal,
    is_loopback_address,
    load_principals,
    parse_principals,
    principal_scope,
    require,
)
from service.errors import PermissionDenied, Unauthenticated

SECRET = "s3cret-token-value"
A = {"name": "a", "tenant": "t", "token": SECRET}


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "principals.json"
    path.write_text(json.dumps(data))
    return path


def test_plain_and_hashed_tokens_and_subjects(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {"name": "a", "tenant": "t1", "permissions": ["destinations.view"], "token": SECRET},
            {
                "name": "b",
                "tenant": "t2",
                "permissions": [],
                "token_sha256": hashlib.sha256(b"other").hexdigest().upper(),
            },
            {"name": "c", "tenant": "t1", "permissions": [], "mtls_subject": "svc.example"},
        ],
    )
    principals = load_principals(path)
    a = principals.by_token(SECRET)
    assert a == Principal("a", "t1", frozenset({"destinations.view"}))
    b = principals.by_token("other")
    assert b is not None and b.name == "b"
    assert principals.by_token("nope") is None
    assert principals.by_token(SECRET.upper()) is None
    c = principals.by_subjects({"svc.example", "unrelated"})
    assert c is not None and c.name == "c"
    assert principals.by_subjects({"unrelated"}) is None
    assert SECRET not in repr(principals)
    assert SECRET not in repr(a)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"name": "a"}, "JSON list"),
        (["a"], "expected an object"),
        ([{"name": "a", "permissions": [], "token": SECRET}], "required"),
        ([{"name": "a", "tenant": "t", "permissions": []}], "needs 'token'"),
        (
            [{"name": "a", "tenant": "t", "permissions": ["destinations.own"], "token": SECRET}],
            "unknown permissions",
        ),
        (
            [{"name": "a", "tenant": "t", "permissions": "destinations.view", "token": SECRET}],
            "list of strings",
        ),
        ([{"name": "a", "tenant": "t", "token": SECRET, "token_sha256": "0" * 64}], "not both"),
        ([{"name": "a", "tenant": "t", "token_sha256": "abc"}], "64 hexadecimal"),
        ([{"name": "a", "tenant": "t", "token": SECRET, "role": "admin"}], "unknown keys"),
        (
            [
                {"name": "a", "tenant": "t", "token": SECRET},
                {"name": "a", "tenant": "u", "token": "x"},
            ],
            "duplicate name",
        ),
        (
            [
                {"name": "a", "tenant": "t", "token": SECRET},
                {"name": "b", "tenant": "u", "token": SECRET},
            ],
            "token already used",
        ),
        (
            [
                {"name": "a", "tenant": "t", "mtls_subject": "s"},
                {"name": "b", "tenant": "t", "mtls_subject": "s"},
            ],
            "already used",
        ),
        ([{"name": "a", "tenant": "", "token": SECRET}], "non-empty"),
    ],
)
def test_bad_files_are_refused_without_revealing_tokens(entries: Any, message: str) -> None:
    with pytest.raises(PrincipalsFileError, match=message) as error:
        parse_principals(entries)
    assert SECRET not in str(error.value)


def test_unreadable_or_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(PrincipalsFileError, match="cannot read"):
        load_principals(tmp_path / "absent.json")
    path = tmp_path / "bad.json"
    path.write_text('[{"name": "a", "token": "' + SECRET + '"')
    with pytest.raises(PrincipalsFileError, match="not valid JSON") as error:
        load_principals(path)
    assert SECRET not in str(error.value)


def test_require_names_the_missing_permissions() -> None:
    principal = Principal("a", "t", frozenset({"destinations.view"}))
    require(principal, "destinations.view")
    with pytest.raises(PermissionDenied) as error:
        require(principal, "destinations.view", IDENTITY_GRAPH_VIEW, "profiles.view")
    assert "identity_graph.view" in error.value.message
    assert "profiles.view" in error.value.message
    assert "destinations.view" not in error.value.message


def test_current_principal_outside_and_inside_a_scope() -> None:
    with pytest.raises(Unauthenticated):
        current_principal()
    principal = Principal("a", "t", frozenset())
    with principal_scope(principal):
        assert current_principal() is principal
    with pytest.raises(Unauthenticated):
        current_principal()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50051",
        "127.1.2.3:0",
        "localhost:50051",
        "[::1]:50051",
        "unix:/tmp/s.sock",
        "unix-abstract:marketo",
    ],
)
def test_loopback_addresses_are_allowed_without_principals(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert is_loopback_address(address)
    with caplog.at_level(logging.WARNING):
        check_bind_address(address, auth_enabled=False)
    assert "unauthenticated" in caplog.text


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0:50051",
        "[::]:50051",
        ":50051",
        "10.0.0.5:50051",
        "example.com:50051",
        "[2001:db8::1]:443",
        "*:50051",
    ],
)
def test_other_addresses_need_principals(address: str) -> None:
    assert not is_loopback_address(address)
    with pytest.raises(InsecureBindError, match="MARKETO_DEST_PRINCIPALS_FILE"):
        check_bind_address(address, auth_enabled=False)
    check_bind_address(address, auth_enabled=True)
