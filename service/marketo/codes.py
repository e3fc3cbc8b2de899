"""What to do next, for every code Marketo documents: one table of data.

Response-level codes (6xx/7xx in `errors`, HTTP statuses, transport failures) decide whether a
call is retried; record-level reasons (1xxx inside `result`) are returned as results. A 1xxx code
that comes back at response level (e.g. 1013 unknown list, 1016 too many imports) is looked up in
the same table: PER_RECORD there means "rejected", except where the table says otherwise
(`Rule.at_response`: 1006 and 1011 name a field the instance's schema lacks, a configuration
error, not a bad record).

One code can mean several things: 1029 is told apart by its message (`REASONS`): a full queue is
retried, a job already queued is not (it is queued), a spent export allowance waits for the
daily reset.

Unknown codes are TRANSIENT, never dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import httpx


class Action(enum.Enum):
    """What the client does with a code."""

    REFRESH = "refresh"  # refresh the token, retry once
    THROTTLED = "throttled"  # the request was not processed: wait, retry
    QUOTA = "quota"  # pause until the daily reset
    TRANSIENT = "transient"  # backoff with jitter, bounded by deadline and attempts
    REJECTED = "rejected"  # raise, never retry
    PER_RECORD = "per_record"  # a record's reason: returned as a result
    CONFIGURATION = "configuration"  # the instance's configuration refuses the whole request
    # (a field deleted from the schema, an endpoint or permission gone): raise, never retry
    # blindly and never split, since no single record causes it
    DAILY_LIMIT = "daily_limit"  # a daily allowance other than the API quota is spent (bulk
    # extract's 500 MB): raise until the daily reset, other calls of the instance go on


@dataclass(frozen=True, slots=True)
class Rule:
    """How one code is handled."""

    action: Action
    description: str
    counted: bool = True
    """Whether Marketo counts the call against the rate limit and daily quota
    (the error-code page exempts 601, 602, 604, 605, 608, 611)."""
    may_have_applied: bool = False
    """Whether a write answered with this code may nevertheless have been applied; such writes
    are not retried blindly when they are not idempotent."""
    at_response: Action | None = None
    """The action when a record-level code comes back at response level (default: REJECTED)."""


_T = Action.TRANSIENT
_R = Action.REJECTED
_P = Action.PER_RECORD
_C = Action.CONFIGURATION

CODES: Mapping[str, Rule] = {
    "600": Rule(Action.REFRESH, "Empty access token", counted=False),
    "601": Rule(Action.REFRESH, "Access token invalid", counted=False),
    "602": Rule(Action.REFRESH, "Access token expired", counted=False),
    "603": Rule(_R, "Access denied"),
    "604": Rule(_T, "Request time-out", counted=False, may_have_applied=True),
    "605": Rule(_R, "HTTP Method not supported", counted=False),
    "606": Rule(Action.THROTTLED, "Max rate limit exceeded"),
    "607": Rule(Action.QUOTA, "Daily quota reached"),
    "608": Rule(_T, "API Temporarily Unavailable", counted=False),
    "609": Rule(_R, "Invalid JSON"),
    "610": Rule(_R, "Requested resource not found"),
    "611": Rule(_T, "System error", counted=False, may_have_applied=True),
    "612": Rule(_R, "Invalid Content Type"),
    "613": Rule(_R, "Invalid Multipart Request"),
    "614": Rule(_R, "Invalid Subscription"),
    "615": Rule(Action.THROTTLED, "Concurrent access limit reached"),
    "616": Rule(_R, "Invalid subscription type"),
    "701": Rule(_R, "Cannot be blank"),
    "702": Rule(_R, "No data found for given search scenario"),
    "703": Rule(_R, "The feature is not enabled for the subscription"),
    "704": Rule(_R, "Invalid date format"),
    "709": Rule(_R, "Business Rule Violation"),
    "710": Rule(_R, "Parent Folder Not Found"),
    "711": Rule(_R, "Incompatible Folder Type"),
    "712": Rule(_R, "Merge operation invalid to person account"),
    "713": Rule(_T, "Transient Error", may_have_applied=True),
    "714": Rule(_R, "Unable to find the default record type"),
    "718": Rule(_R, "ExternalSalesPersonId not found"),
    "719": Rule(_T, "Lock wait timeout exception", may_have_applied=True),
    "1001": Rule(_P, "Invalid value"),
    "1002": Rule(_P, "Missing value for required parameter"),
    "1003": Rule(_P, "Invalid data"),
    "1004": Rule(_P, "Lead not found"),
    "1005": Rule(_P, "Lead already exists"),
    "1006": Rule(_P, "Field not found", at_response=_C),
    "1007": Rule(_P, "Multiple leads match the lookup criteria"),
    "1008": Rule(_P, "Access denied to partition"),
    "1009": Rule(_P, "Partition name must be specified"),
    "1010": Rule(_P, "Partition update not allowed"),
    "1011": Rule(_P, "Field not supported", at_response=_C),
    "1012": Rule(_P, "Invalid cookie value"),
    "1013": Rule(_P, "Object not found"),
    "1014": Rule(Action.THROTTLED, "Failed to create object"),
    "1015": Rule(_P, "Lead not in list"),
    "1016": Rule(Action.THROTTLED, "Too many imports"),
    "1017": Rule(_P, "Object already exists"),
    "1018": Rule(_P, "CRM enabled"),
    "1019": Rule(Action.THROTTLED, "Import in progress"),
    "1020": Rule(_P, "Too many clones to program"),
    "1021": Rule(_P, "Company update not allowed"),
    "1022": Rule(Action.THROTTLED, "Object in use"),
    "1025": Rule(_P, "Program status not found"),
    "1026": Rule(_P, "Custom object not enabled"),
    "1027": Rule(_P, "Max activity type limit reached"),
    "1028": Rule(_P, "Max field limit reached"),
    "1029": Rule(Action.THROTTLED, "Too many jobs in queue"),  # other reasons: REASONS
    "1035": Rule(_P, "Unsupported filter type"),
    "1036": Rule(_P, "Duplicate object found in input"),
    "1037": Rule(_P, "Lead was skipped"),
    "1042": Rule(_P, "Invalid runAt date"),
    "1048": Rule(_P, "Custom object discard draft failed"),
    "1049": Rule(_P, "Failed to create activity"),
    "1076": Rule(_P, "Merge leads call with mergeInCRM flag"),
    "1077": Rule(_P, "Merge leads call failed due to SFDC field length"),
    "1078": Rule(_P, "Merge leads call failed due to deleted entity or not a lead"),
    "1079": Rule(_P, "Merge leads call failed due to non-unique lead"),
    "1080": Rule(_P, "Too many losing leads in merge"),
}

REASONS: Mapping[str, Mapping[str, Rule]] = {
    "1029": {
        "too many jobs": Rule(Action.THROTTLED, "Too many jobs in queue"),
        "already queued": Rule(_R, "Job already queued"),
        "daily quota": Rule(Action.DAILY_LIMIT, "Export daily quota exceeded"),
    },
}
"""Codes whose meaning depends on the message: the rule of the first phrase the message contains
(case-insensitive), else the code's rule in `CODES`."""

UNKNOWN = Rule(_T, "Unknown code", may_have_applied=True)
"""Codes missing from the table: retried as transient (conservatively, as possibly applied)."""

HTTP_STATUSES: Mapping[int, Rule] = {
    401: Rule(Action.REFRESH, "Unauthorized", counted=False),
    500: Rule(_T, "Internal Server Error", may_have_applied=True),
    403: Rule(_C, "Forbidden"),
    404: Rule(_C, "Not Found"),
    413: Rule(_R, "Request Entity Too Large"),
    414: Rule(_R, "Request-URI Too Long"),
    429: Rule(Action.THROTTLED, "Too Many Requests"),
}
"""Non-2xx HTTP statuses from the REST endpoints; other 4xx are REJECTED, 5xx TRANSIENT and
possibly applied (the request may have been processed before the gateway gave up)."""

TRANSPORT_ERRORS: tuple[tuple[type[Exception], Rule], ...] = (
    # Never sent: retrying cannot duplicate a write.
    (httpx.ConnectError, Rule(_T, "Connection failed", counted=False)),
    (httpx.ConnectTimeout, Rule(_T, "Connect timeout", counted=False)),
    (httpx.PoolTimeout, Rule(_T, "Connection pool timeout", counted=False)),
    # Possibly sent and processed.
    (httpx.TimeoutException, Rule(_T, "Timed out waiting for Marketo", may_have_applied=True)),
    (httpx.TransportError, Rule(_T, "Connection lost", may_have_applied=True)),
)
"""First match wins (subclasses before their bases)."""


def classify_code(code: str | int | None) -> Rule:
    """The rule for a Marketo code (string or integer, as clients in the wild see both)."""
    if code is None:
        return UNKNOWN
    return CODES.get(str(code).strip(), UNKNOWN)


def classify_response_code(code: str | int | None, message: str = "") -> Rule:
    """The rule for a code found in a response's `errors` with its message: record-level codes
    there reject, or are configuration errors where the table says so."""
    text = message.lower()
    for phrase, by_reason in REASONS.get(str(code).strip(), {}).items():
        if phrase in text:
            return by_reason
    rule = classify_code(code)
    if rule.action is Action.PER_RECORD:
        return Rule(rule.at_response or _R, rule.description, counted=rule.counted)
    return rule


def classify_status(status: int) -> Rule:
    """The rule for a non-2xx HTTP status."""
    if status in HTTP_STATUSES:
        return HTTP_STATUSES[status]
    if status >= 500:
        return Rule(_T, f"HTTP {status}", may_have_applied=True)
    return Rule(_R, f"HTTP {status}")


def classify_exception(exc: Exception) -> Rule:
    """The rule for a transport failure."""
    for kind, rule in TRANSPORT_ERRORS:
        if isinstance(exc, kind):
            return rule
    return UNKNOWN
