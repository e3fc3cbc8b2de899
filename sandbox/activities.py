"""Activities API, the parts lead reconciliation needs: Get Paging Token, Get Deleted Leads.

A paging token is an opaque base32 string naming either a date (from Get Paging Token) or a
position in the time-ordered activity log (from a previous page).
"""

from __future__ import annotations

import base64
import bisect
from typing import Any

from sandbox.http import Call, MarketoError, Reply, lead_ok, positive_int
from sandbox.schema import iso_z, parse_time

DELETE_LEAD = 37
MAX_BATCH = 300


def _encode(kind: str, value: int) -> str:
    return base64.b32encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def _decode(token: str) -> tuple[str, int]:
    try:
        padded = token + "=" * (-len(token) % 8)
        kind, value = base64.b32decode(padded.encode()).decode().split(":")
        if kind not in ("t", "p"):
            raise ValueError(kind)
        return kind, int(value)
    except (ValueError, UnicodeDecodeError):
        raise MarketoError("1003", "Invalid nextPageToken") from None


async def paging_token(call: Call) -> Reply:
    raw = call.param("sinceDatetime")
    if not raw:
        raise MarketoError("701", "sinceDatetime cannot be blank")
    try:
        since = parse_time(raw)
    except ValueError:
        raise MarketoError("1003", "Invalid value for 'sinceDatetime'") from None
    return Reply({"success": True, "nextPageToken": _encode("t", int(since * 1000))})


async def deleted_leads(call: Call) -> Reply:
    token = call.param("nextPageToken")
    if not token:
        raise MarketoError("701", "nextPageToken cannot be blank")
    kind, value = _decode(token)
    log = call.state.deleted
    if kind == "t":
        times = [item.deleted_at for item in log]
        start = bisect.bisect_left(times, value / 1000)
    else:
        start = min(value, len(log))
    batch_size = positive_int(call, "batchSize", MAX_BATCH, MAX_BATCH)
    page = log[start : start + batch_size]
    end = start + len(page)
    result: list[dict[str, Any]] = [
        {
            "id": number + 1,
            "marketoGUID": str(number + 1),
            "leadId": item.lead_id,
            "activityDate": iso_z(item.deleted_at),
            "activityTypeId": DELETE_LEAD,
            "primaryAttributeValueId": item.lead_id,
            "primaryAttributeValue": item.name,
            "attributes": [],
        }
        for number, item in enumerate(page, start=start)
    ]
    # Activities always carry the token and moreResult, even on the last page.
    extra = {"nextPageToken": _encode("p", end), "moreResult": end < len(log)}
    if not result:
        return Reply({"success": True, **extra})
    return lead_ok(result, **extra)
