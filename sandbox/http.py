"""Request and response plumbing shared by the endpoint modules: calls, replies, envelopes."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request

from sandbox.state import SandboxState

JSON_TYPE = "application/json;charset=UTF-8"


class MarketoError(Exception):
    """A response-level error: HTTP 200, `success: false`, one entry in `errors`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


@dataclass
class Call:
    """One API request as the endpoint handlers see it."""

    request: Request
    method: str
    """The effective method (`GET` for `POST ...?_method=GET`)."""
    params: dict[str, list[str]]
    """Query parameters merged with a form-encoded body."""
    body: bytes
    state: SandboxState
    now: float
    path: dict[str, str]
    form: FormData | None = None
    """The parsed multipart body, when there is one."""
    _json: Any = field(default=None, repr=False)

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None

    def values(self, name: str) -> list[str]:
        """Every value of a parameter, splitting comma-separated ones."""
        out: list[str] = []
        for raw in self.params.get(name, []):
            out.extend(part.strip() for part in raw.split(",") if part.strip())
        return out

    def json(self) -> Any:
        """The JSON body; 612 when it is not JSON, 609 when it does not parse."""
        if self._json is None:
            content_type = self.request.headers.get("content-type", "")
            if "json" not in content_type:
                raise MarketoError("612", "Invalid Content Type")
            try:
                self._json = json.loads(self.body)
            except (ValueError, UnicodeDecodeError):
                raise MarketoError("609", "Invalid JSON") from None
        return self._json

    def json_object(self) -> dict[str, Any]:
        """The JSON body when it is an object; 609 otherwise."""
        body = self.json()
        if not isinstance(body, dict):
            raise MarketoError("609", "Invalid JSON")
        return body

    def json_input(self) -> list[Any] | None:
        """The `input` array of a JSON body, or None when the body is empty."""
        if not self.body.strip():
            return None
        body = self.json()
        if not isinstance(body, dict) or not isinstance(body.get("input"), list):
            raise MarketoError("701", "input cannot be blank")
        items: list[Any] = body["input"]
        return items


@dataclass
class Reply:
    """A response plus the code the call counters file it under."""

    body: Any
    code: str = "success"
    status: int = 200
    media_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def lead_ok(result: list[Any], **extra: Any) -> Reply:
    """Lead Database success: no `errors`/`warnings` keys (as recorded from real instances)."""
    return Reply({"result": result, "success": True, **extra})


def lead_error(code: str, message: str) -> Reply:
    return Reply({"success": False, "errors": [{"code": code, "message": message}]}, code=code)


def asset_ok(result: list[Any]) -> Reply:
    """Asset API success: always carries `errors` and `warnings`."""
    return Reply({"success": True, "errors": [], "result": result, "warnings": []})


def asset_not_found() -> Reply:
    """Asset API empty search: success, a warning and no `result` key."""
    return Reply(
        {
            "success": True,
            "errors": [],
            "warnings": ["No assets found for the given search criteria."],
        }
    )


def asset_error(code: str, message: str) -> Reply:
    return Reply(
        {"success": False, "errors": [{"code": code, "message": message}], "warnings": []},
        code=code,
    )


def html_error(status: int, reason: str) -> Reply:
    """An HTTP-level failure as the nginx in front of Marketo renders it."""
    body = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return Reply(body, code=f"http_{status}", status=status, media_type="text/html")


def skipped(code: str, message: str) -> dict[str, Any]:
    """A per-record skip; skipped records carry no `id`."""
    return {"status": "skipped", "reasons": [{"code": code, "message": message}]}


def positive_int(call: Call, name: str, default: int, maximum: int) -> int:
    raw = call.param(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MarketoError("1003", f"Invalid value for '{name}'") from None
    if value < 1:
        raise MarketoError("1003", f"Invalid value for '{name}'")
    return min(value, maximum)


def paginate(call: Call, items: list[Any], batch_size: int) -> tuple[list[Any], dict[str, Any]]:
    """One page of `items` and the `moreResult`/`nextPageToken` keys when more remain."""
    token = call.param("nextPageToken")
    offset = 0
    if token:
        try:
            offset = int(base64.urlsafe_b64decode(token.encode() + b"==").decode())
        except ValueError:
            raise MarketoError("1003", "Invalid nextPageToken") from None
    end = offset + batch_size
    if end >= len(items):
        return items[offset:], {}
    next_token = base64.urlsafe_b64encode(str(end).encode()).decode().rstrip("=")
    return items[offset:end], {"moreResult": True, "nextPageToken": next_token}
