"""The Marketo REST client: typed operations over one injected `httpx.AsyncClient`.

Every call goes through `_request`, which checks the client's call gate (a gated view's, see
`gated` and `gate.py`) when the call starts and before each exchange, takes a token, is admitted
by the instance's limits, classifies the answer with the table in `codes.py` and retries,
refreshes, pauses or raises accordingly. Each HTTP exchange, waiting for a pooled connection
included, lasts at most the HTTP client's read timeout as a whole (`_send`). The client holds
no domain rules: what a result means is the caller's business.
Each HTTP exchange, attempt and retry is reported to the injected `MarketoObserver`
(`observer.py`; by default nobody), never to a global meter.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx

from service.marketo.auth import AccessToken, TokenCache
from service.marketo.clock import Clock, SystemClock
from service.marketo.codes import (
    Action,
    Rule,
    classify_exception,
    classify_response_code,
    classify_status,
)
from service.marketo.errors import (
    AuthenticationError,
    ConfigurationError,
    MarketoError,
    OutcomeUnknownError,
    QuotaExhaustedError,
    RejectedError,
    UnavailableError,
)
from service.marketo.gate import Gate
from service.marketo.limits import InstanceLimits, next_reset
from service.marketo.observer import NO_OBSERVER, Call, MarketoObserver, endpoint_of
from service.marketo.types import (
    ExportJob,
    FieldDescription,
    Folder,
    ImportJob,
    Lead,
    LeadPage,
    LeadSchema,
    MembershipResult,
    Partition,
    Reason,
    RecordResult,
    SchemaField,
    StaticList,
    SyncAction,
    UsageDay,
    Workspace,
)
from service.settings import RetryPolicy

_T = TypeVar("_T")
logger = logging.getLogger(__name__)

BATCH = 300
"""Records or ids per Lead Database call."""
MAX_URL = 8_000
"""Longest URL sent as GET; beyond, POST with `_method=GET` (Marketo's limit is 8 KB)."""
USAGE_RETRY = RetryPolicy(max_attempts=2, deadline=10.0, base_delay=0.5)
"""Retries of the Usage API reading made before another call: it must not hold that call up."""
_NON_IDEMPOTENT = frozenset(
    {SyncAction.CREATE_ONLY, SyncAction.CREATE_OR_UPDATE, SyncAction.CREATE_DUPLICATE}
)


def _base(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/rest")] if url.endswith("/rest") else url


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("+0000") and "Z" in text:  # asset API: "2021-11-23T22:57:24Z+0000"
        text = text[: -len("+0000")]
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _reasons(raw: Any) -> tuple[Reason, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(
        Reason(code=str(r.get("code", "")), message=str(r.get("message", "")))
        for r in raw
        if isinstance(r, Mapping)
    )


def _lead(raw: Mapping[str, Any]) -> Lead:
    return Lead(
        id=int(raw["id"]),
        updated_at=_parse_time(raw.get("updatedAt")),
        partition_id=_int(raw.get("leadPartitionId")),
        fields=dict(raw),
    )


def _static_list(raw: Mapping[str, Any]) -> StaticList:
    folder = raw.get("folder") if isinstance(raw.get("folder"), Mapping) else {}
    assert isinstance(folder, Mapping)
    return StaticList(
        id=int(raw["id"]),
        name=str(raw.get("name", "")),
        folder_id=_int(folder.get("id")),
        folder_type=folder.get("type"),
        workspace=raw.get("workspace"),
        description=str(raw.get("description") or ""),
        created_at=_parse_time(raw.get("createdAt")),
        updated_at=_parse_time(raw.get("updatedAt")),
        computed_url=raw.get("computedUrl"),
    )


def _folder(raw: Mapping[str, Any]) -> Folder:
    ident = raw.get("folderId") if isinstance(raw.get("folderId"), Mapping) else {}
    assert isinstance(ident, Mapping)
    return Folder(
        id=int(ident.get("id", raw.get("id"))),
        name=str(raw.get("name", "")),
        type=str(ident.get("type", "Folder")),
        path=str(raw.get("path") or ""),
        workspace=raw.get("workspace"),
        folder_type=raw.get("folderType"),
        is_system=bool(raw.get("isSystem", False)),
    )


def _import_job(raw: Mapping[str, Any]) -> ImportJob:
    return ImportJob(
        batch_id=int(raw["batchId"]),
        status=str(raw.get("status", "")),
        import_id=None if raw.get("importId") is None else str(raw.get("importId")),
        leads_processed=_int(raw.get("numOfLeadsProcessed")) or 0,
        rows_failed=_int(raw.get("numOfRowsFailed")) or 0,
        rows_with_warning=_int(raw.get("numOfRowsWithWarning")) or 0,
        message=str(raw.get("message") or ""),
    )


def _record_result(raw: Mapping[str, Any]) -> RecordResult:
    return RecordResult(
        status=str(raw.get("status", "")),
        id=_int(raw.get("id")),
        reasons=_reasons(raw.get("reasons")),
    )


def _export_job(raw: Mapping[str, Any]) -> ExportJob:
    return ExportJob(
        export_id=str(raw["exportId"]),
        status=str(raw.get("status", "")),
        format=str(raw.get("format") or "CSV"),
        created_at=_parse_time(raw.get("createdAt")),
        records=_int(raw.get("numberOfRecords")),
        file_size=_int(raw.get("fileSize")),
        file_checksum=None if raw.get("fileChecksum") is None else str(raw["fileChecksum"]),
    )


def _chunks(items: Sequence[_T], size: int = BATCH) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass(slots=True)
class _Answer:
    """What one attempt produced: a body, or a rule saying what to do next."""

    body: Any = None
    text: str = ""
    rule: Rule | None = None
    code: str | None = None
    message: str = ""
    status: int | None = None
    warnings: list[Any] = field(default_factory=list)


class MarketoClient:
    """Typed Marketo REST operations for one instance and one custom service."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        limits: InstanceLimits | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        observer: MarketoObserver = NO_OBSERVER,
        seed_from_usage: bool = False,
    ) -> None:
        """`seed_from_usage`: read the Usage API at the instance's first call and hourly, and
        seed the instance's daily count with it (`InstanceLimits.seed_usage`)."""
        self._http = http
        self._observer = observer
        self._base = _base(base_url)
        self._client_id = client_id
        self._secret = client_secret
        self._clock: Clock = clock or (limits.clock if limits else SystemClock())
        self.limits = limits or InstanceLimits.shared(http, self._base, clock=self._clock)
        self.retry = retry or RetryPolicy()
        self._tokens = TokenCache.shared(http, self._base, client_id, client_secret)
        self._seed_from_usage = seed_from_usage
        self._gate: Gate | None = None
        self._exchange_timeout: float | None = http.timeout.read
        """The longest one HTTP exchange may last, whole: httpx applies its timeouts to each
        phase (pool wait, connect, write, each read) apart, the read one being the longest wait
        for Marketo's answer (`marketo_timeout_seconds`)."""
        self.attempts = 0
        """HTTP calls made by this client (Identity included)."""

    def __repr__(self) -> str:
        return f"MarketoClient(base_url={self._base!r}, client_id={self._client_id!r})"

    def gated(self, gate: Gate | None) -> MarketoClient:
        """A view of this client whose calls pass `gate` (none: a view with no gate): it shares
        the HTTP client, token cache, limits and observer, and counts its own `attempts`. The
        gate is checked when a call starts and right before each exchange, Identity included;
        this client, and every other one of the instance, are not gated by it."""
        if gate is self._gate:
            return self
        view = copy.copy(self)
        view._gate = gate
        view.attempts = 0
        return view

    def _check_gate(self) -> None:
        """Raise the gate's error (an `UnavailableError`, nothing sent) when it is shut now."""
        if self._gate is not None:
            self._gate.check()

    # ------------------------------------------------------------------ auth

    async def token(self) -> AccessToken:
        """A bearer token with at least 60 s to live (cached per instance and client id)."""
        token = await self._tokens.get(self._clock, self._fetch_token)
        # Identity's scope is the API user whose calls the Usage API counts as this process's.
        self.limits.api_users.add(token.scope or self._client_id)
        return token

    async def _fetch_token(self) -> AccessToken:
        url = f"{self._base}/identity/oauth/token"
        # Credentials go in a form body, never in the URL: URLs reach logs and spans.
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret,
        }
        started = self._clock.now()
        attempt = 0
        while True:
            attempt += 1
            self.attempts += 1
            t0 = time.perf_counter()
            request = self._http.build_request("POST", url, data=form)
            try:
                response = await self._send(Call(request, attempt, endpoint="identity"))
            except httpx.TransportError as exc:
                self._record("identity", "POST", None, type(exc).__name__, t0)
                await self._backoff_or_raise(
                    "identity",
                    Action.TRANSIENT,
                    None,
                    f"Identity unreachable: {type(exc).__name__}",
                    attempt,
                    started,
                )
                continue
            self._record("identity", "POST", response.status_code, None, t0)
            if response.status_code == 200:
                try:
                    body = response.json()
                    value = str(body["access_token"])
                    expires_in = float(body.get("expires_in", 0))
                except (ValueError, KeyError, TypeError):
                    await self._backoff_or_raise(
                        "identity",
                        Action.TRANSIENT,
                        None,
                        "Identity sent an unreadable token",
                        attempt,
                        started,
                    )
                    continue
                return AccessToken(
                    value=value,
                    expires_at=self._clock.now() + expires_in,
                    scope=str(body.get("scope", "")),
                )
            if response.status_code in (400, 401, 403):
                raise AuthenticationError(self._identity_detail(response), endpoint="identity")
            await self._backoff_or_raise(
                "identity",
                Action.TRANSIENT,
                str(response.status_code),
                f"Identity answered HTTP {response.status_code}",
                attempt,
                started,
            )

    def _identity_detail(self, response: httpx.Response) -> str:
        try:
            body = response.json()
            detail = str(body.get("error_description") or body.get("error") or "")
        except (ValueError, AttributeError):
            detail = ""
        return self._scrub(detail)[:200]

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = _mask_whole(text, self._secret)
        token = self._tokens._token
        if token is not None and token.value:
            text = _mask_whole(text, token.value)
        return text

    # ------------------------------------------------------------------ core

    def _record(
        self, endpoint: str, method: str, status: int | None, code: str | None, t0: float
    ) -> None:
        self._observer.attempted(
            endpoint=endpoint,
            method=method,
            code=code or ("ok" if status and status < 300 else str(status or "none")),
            seconds=time.perf_counter() - t0,
        )

    async def _send(self, call: Call) -> httpx.Response:
        """Sends `call.request`, the exchange told to the observer, unless the client's gate is
        shut now (then its error, an `UnavailableError`, leaves the exchange).

        The exchange as a whole, waiting for a pooled connection included, is cut after
        `_exchange_timeout` (`httpx.TimeoutException`: the request may have been processed, as
        after a read timeout), so a call the gate lets start ends within the gate's margin."""
        with self._observer.exchange(call) as exchange:
            self._check_gate()
            deadline = asyncio.timeout(self._exchange_timeout)
            try:
                async with deadline:
                    response = await self._http.send(call.request)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise httpx.TimeoutException(
                    f"no answer within {self._exchange_timeout:g}s (pool wait included)",
                    request=call.request,
                ) from None
            exchange.answered(response)
        return response

    async def _backoff_or_raise(
        self,
        endpoint: str,
        action: Action,
        code: str | None,
        message: str,
        attempt: int,
        started: float,
        policy: RetryPolicy | None = None,
    ) -> None:
        """Sleep before the next attempt, or raise `UnavailableError` when out of budget."""
        policy = policy or self.retry
        delay = policy.delay(action, attempt, code)
        if attempt >= policy.max_attempts or self._clock.now() + delay - started > policy.deadline:
            raise UnavailableError(
                f"Marketo unavailable for {endpoint} after {attempt} attempts: {message}",
                code=code,
                attempts=attempt,
                endpoint=endpoint,
            )
        self._observer.retrying(endpoint=endpoint, action=action.value)
        logger.debug("retrying %s in %.2fs after %s (attempt %d)", endpoint, delay, code, attempt)
        if action is Action.THROTTLED:
            # Hold every caller of this instance back, not just this one: no retry storm.
            self.limits.note_throttled(delay)
        else:
            await self._clock.sleep(delay)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str | None = None,
        params: Sequence[tuple[str, str]] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        idempotent: bool = True,
        envelope: bool = True,
        records: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> _Answer:
        """Send one logical request with retries (`retry`, default the client's); returns the
        successful answer. `endpoint` names the call (default: after its path, `endpoint_of`);
        `records`: how many records the request carries (told to the observer)."""
        endpoint = endpoint or endpoint_of(path)
        self._check_gate()  # a refused call takes no token, no usage reading, no limit
        if self._seed_from_usage and self.limits.usage_due():
            await self._seed_usage()
        started = self._clock.now()
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            try:
                token = await self.token()
                answer = await self._attempt(
                    method,
                    path,
                    endpoint=endpoint,
                    attempt=attempt,
                    records=records,
                    token=token,
                    params=params,
                    json_body=json_body,
                    form=form,
                    files=files,
                    envelope=envelope,
                )
            except UnavailableError as error:
                if error.attempts == 0:  # the gate refused this attempt: the earlier ones left
                    error.attempts = attempt - 1
                raise
            rule = answer.rule
            if rule is None:
                return answer
            action = rule.action
            if action is Action.REFRESH:
                self._tokens.invalidate(token)
                if not refreshed:
                    refreshed = True  # the first refresh retries at once
                    self._observer.retrying(endpoint=endpoint, action=Action.REFRESH.value)
                    continue
                action = Action.TRANSIENT
            if action is Action.QUOTA:
                until = self.limits.pause_until_reset()
                raise QuotaExhaustedError(until, code=answer.code, endpoint=endpoint)
            if action is Action.DAILY_LIMIT:
                until = next_reset(self._clock.now())
                raise QuotaExhaustedError(
                    until, code=answer.code, message=answer.message, endpoint=endpoint
                )
            if action is Action.CONFIGURATION:
                raise ConfigurationError(answer.code or "", answer.message, endpoint=endpoint)
            if action in (Action.REJECTED, Action.PER_RECORD):
                raise RejectedError(answer.code or "", answer.message, endpoint=endpoint)
            if action is Action.TRANSIENT and rule.may_have_applied and not idempotent:
                raise OutcomeUnknownError(
                    f"No usable answer from Marketo for {endpoint} "
                    f"({answer.code}: {answer.message}); the write may have been applied",
                    code=answer.code,
                    endpoint=endpoint,
                )
            await self._backoff_or_raise(
                endpoint,
                action,
                answer.code,
                f"{answer.code} {answer.message}",
                attempt,
                started,
                retry,
            )

    async def _attempt(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        attempt: int,
        records: int | None,
        token: AccessToken,
        params: Sequence[tuple[str, str]] | None,
        json_body: Any,
        form: Mapping[str, str] | None,
        files: Mapping[str, tuple[str, bytes, str]] | None,
        envelope: bool,
    ) -> _Answer:
        url = f"{self._base}{path}"
        query = list(params or [])
        send_method = method
        content: bytes | None = None
        headers = {"Authorization": f"Bearer {token.value}"}
        if method == "GET" and query and len(url) + len(urlencode(query)) + 1 > MAX_URL:
            # Marketo answers 414 past 8 KB: send the query as a form body instead.
            send_method = "POST"
            content = urlencode(query).encode()
            query = [("_method", "GET")]
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        kwargs: dict[str, Any] = {"params": query or None, "headers": headers}
        if content is not None:
            kwargs["content"] = content
        elif json_body is not None:
            kwargs["json"] = json_body
        elif files is not None:
            kwargs["files"] = files
            kwargs["data"] = form or {}
        elif form is not None:
            kwargs["data"] = form
        self.attempts += 1
        t0 = time.perf_counter()
        request = self._http.build_request(send_method, url, **kwargs)
        answer = await self._exchange(request, endpoint, attempt, records, envelope)
        self._record(endpoint, method, answer.status, answer.code, t0)
        logger.debug(
            "%s %s -> %s code=%s %.1fms",
            method,
            endpoint,
            answer.status,
            answer.code or "ok",
            (time.perf_counter() - t0) * 1000,
        )
        return answer

    async def _exchange(
        self,
        request: httpx.Request,
        endpoint: str,
        attempt: int,
        records: int | None,
        envelope: bool,
    ) -> _Answer:
        waited = time.perf_counter()
        async with self.limits.call() as permit:
            try:
                call = Call(
                    request,
                    attempt,
                    endpoint=endpoint,
                    records=records,
                    limiter_wait=time.perf_counter() - waited,
                )
                response = await self._send(call)
            except httpx.TransportError as exc:
                rule = classify_exception(exc)
                permit.counted = rule.counted
                return _Answer(rule=rule, code=type(exc).__name__, message=rule.description)
            answer = self._interpret(response, envelope)
            permit.counted = answer.rule.counted if answer.rule else True
            return answer

    def _interpret(self, response: httpx.Response, envelope: bool) -> _Answer:
        status = response.status_code
        if status >= 300:
            rule = classify_status(status)
            return _Answer(rule=rule, code=str(status), message=rule.description, status=status)
        is_json = "json" in response.headers.get("content-type", "")
        if not is_json and not envelope:
            return _Answer(text=response.text, status=status)
        try:
            body = response.json()
        except ValueError:
            rule = classify_response_code(None)
            return _Answer(rule=rule, code=None, message="unreadable answer", status=status)
        if not envelope and not (isinstance(body, Mapping) and "success" in body):
            return _Answer(body=body, status=status)
        if not isinstance(body, Mapping):
            return _Answer(
                rule=classify_response_code(None), message="unexpected answer", status=status
            )
        if body.get("success") is True:
            return _Answer(body=body, status=status, warnings=list(body.get("warnings") or []))
        errors = body.get("errors") or [{}]
        first = errors[0] if isinstance(errors[0], Mapping) else {}
        code = None if first.get("code") is None else str(first.get("code"))
        message = self._scrub(str(first.get("message", "")))[:500]
        return _Answer(
            body=body,
            rule=classify_response_code(code, message),
            code=code,
            message=message,
            status=status,
        )

    async def _result(
        self, method: str, path: str, *, endpoint: str | None = None, **kw: Any
    ) -> list[Any]:
        answer = await self._request(method, path, endpoint=endpoint, **kw)
        result = answer.body.get("result") if isinstance(answer.body, Mapping) else None
        return list(result) if isinstance(result, list) else []

    async def _create_asset(
        self, path: str, form: dict[str, str], description: str, what: str
    ) -> Mapping[str, Any]:
        """POST the creation of an asset (not retried when the outcome is unknown); its record."""
        if description:
            form = {**form, "description": description}
        result = await self._result("POST", path, form=form, idempotent=False)
        if not result:
            raise OutcomeUnknownError(
                f"Marketo created no {what} record", code=None, endpoint=endpoint_of(path)
            )
        record: Mapping[str, Any] = result[0]
        return record

    async def _paged(
        self,
        path: str,
        params: list[tuple[str, str]],
        *,
        records: int | None = None,
    ) -> list[Mapping[str, Any]]:
        rows: list[Mapping[str, Any]] = []
        page_token: str | None = None
        given: set[str] = set()
        while True:
            query = params + ([("nextPageToken", page_token)] if page_token else [])
            answer = await self._request("GET", path, params=query, records=records)
            body = answer.body if isinstance(answer.body, Mapping) else {}
            rows.extend(r for r in body.get("result") or [] if isinstance(r, Mapping))
            page_token = body.get("nextPageToken")
            if not body.get("moreResult") or not page_token:
                return rows
            page_token = str(page_token)
            if page_token in given:
                # Pages going round in a circle would be asked for (and counted) for ever.
                raise MarketoError(
                    "Marketo answered a page token it had given before",
                    endpoint=endpoint_of(path),
                )
            given.add(page_token)

    # ------------------------------------------------------------ schema, org

    async def describe(self) -> list[FieldDescription]:
        """Describe Lead: every lead field with its REST and SOAP names."""
        out = []
        for raw in await self._result("GET", "/rest/v1/leads/describe.json"):
            rest = raw.get("rest") if isinstance(raw.get("rest"), Mapping) else None
            soap = raw.get("soap") if isinstance(raw.get("soap"), Mapping) else None
            out.append(
                FieldDescription(
                    id=int(raw.get("id", 0)),
                    display_name=str(raw.get("displayName", "")),
                    data_type=str(raw.get("dataType", "")),
                    rest_name=None if rest is None else rest.get("name"),
                    rest_read_only=bool(rest.get("readOnly", False)) if rest else False,
                    length=_int(raw.get("length")),
                    soap_name=None if soap is None else soap.get("name"),
                )
            )
        return out

    async def describe2(self) -> LeadSchema:
        """Describe Lead2: the fields and which of them are searchable keys."""
        result = await self._result("GET", "/rest/v1/leads/describe2.json")
        raw = result[0] if result else {}
        searchable = tuple(
            tuple(str(name) for name in key) if isinstance(key, list) else (str(key),)
            for key in raw.get("searchableFields") or []
        )
        fields = tuple(
            SchemaField(
                name=str(f.get("name", "")),
                display_name=str(f.get("displayName", "")),
                data_type=str(f.get("dataType", "")),
                updateable=bool(f.get("updateable", False)),
                length=_int(f.get("length")),
                crm_managed=bool(f.get("crmManaged", False)),
            )
            for f in raw.get("fields") or []
            if isinstance(f, Mapping)
        )
        return LeadSchema(
            name=str(raw.get("name", "")), searchable_fields=searchable, fields=fields
        )

    async def partitions(self) -> list[Partition]:
        """The instance's lead partitions."""
        result = await self._result("GET", "/rest/v1/leads/partitions.json")
        return [
            Partition(
                id=int(p["id"]),
                name=str(p.get("name", "")),
                description=str(p.get("description") or ""),
            )
            for p in result
        ]

    async def workspaces(self) -> list[Workspace]:
        """The instance's workspaces (User Management API: a bare JSON array)."""
        answer = await self._request(
            "GET",
            "/userservice/management/v1/users/workspaces.json",
            endpoint="users/workspaces",
            envelope=False,
        )
        body = answer.body
        items = body.get("result", []) if isinstance(body, Mapping) else body
        return [
            Workspace(
                id=int(w["id"]),
                name=str(w.get("name", "")),
                description=str(w.get("description") or ""),
                status=w.get("status"),
            )
            for w in items or []
            if isinstance(w, Mapping)
        ]

    # ------------------------------------------------------------------ usage

    async def usage(self, *, last_7_days: bool = False) -> list[UsageDay]:
        """The Usage API: today's counted calls per API user, or the last seven days'."""
        path = "/rest/v1/stats/usage/last7days.json" if last_7_days else "/rest/v1/stats/usage.json"
        return await self._usage_days(path)

    async def _usage_days(self, path: str, **kw: Any) -> list[UsageDay]:
        days = []
        for raw in await self._result("GET", path, **kw):
            users = {
                str(u.get("userId", "")): _int(u.get("count")) or 0
                for u in raw.get("users") or []
                if isinstance(u, Mapping)
            }
            try:
                day = date.fromisoformat(str(raw.get("date", ""))[:10])
            except ValueError:
                continue
            days.append(UsageDay(day=day, total=_int(raw.get("total")) or 0, users=users))
        return days

    async def _seed_usage(self) -> None:
        """Seed the instance's daily count from the Usage API; a failed reading is logged and
        waits for the next hour (the call that asked goes on either way)."""
        try:
            days = await self._usage_days("/rest/v1/stats/usage.json", retry=USAGE_RETRY)
        except MarketoError as exc:
            logger.info("Usage API not read for %s: %s", self._base, type(exc).__name__)
            return
        ours_users = self.limits.api_users  # the token taken for the reading registered ours
        for day in days:
            # The reading is counted, but not in its own figures.
            ours = 1 + sum(n for user, n in day.users.items() if user in ours_users)
            others = sum(n for user, n in day.users.items() if user not in ours_users)
            self.limits.seed_usage(day.day, ours=ours, others=others)

    # ---------------------------------------------------------------- folders

    async def folder_by_name(self, name: str, *, workspace: str | None = None) -> Folder | None:
        """The folder called `name` (exact match), or None."""
        params = [("name", name)] + ([("workSpace", workspace)] if workspace else [])
        result = await self._result(
            "GET",
            "/rest/asset/v1/folder/byName.json",
            params=params,
        )
        return _folder(result[0]) if result else None

    async def create_folder(
        self, name: str, parent_id: int, *, parent_type: str = "Folder", description: str = ""
    ) -> Folder:
        """Create a folder; not retried when the outcome is unknown."""
        form = {"name": name, "parent": json.dumps({"id": parent_id, "type": parent_type})}
        return _folder(
            await self._create_asset("/rest/asset/v1/folders.json", form, description, "folder")
        )

    # ----------------------------------------------------------- static lists

    async def static_list_by_name(self, name: str) -> StaticList | None:
        """The static list called `name` (exact match), or None."""
        result = await self._result(
            "GET",
            "/rest/asset/v1/staticList/byName.json",
            params=[("name", name)],
        )
        return _static_list(result[0]) if result else None

    async def static_list(self, list_id: int) -> StaticList | None:
        """The static list with this id, or None."""
        try:
            result = await self._result(
                "GET",
                f"/rest/asset/v1/staticList/{int(list_id)}.json",
            )
        except RejectedError as exc:
            if exc.code in ("702", "610", "1013"):
                return None
            raise
        return _static_list(result[0]) if result else None

    async def create_static_list(
        self, name: str, folder_id: int, *, folder_type: str = "Folder", description: str = ""
    ) -> StaticList:
        """Create a static list (709 when the name is taken); not retried when the outcome is
        unknown."""
        form = {"name": name, "folder": json.dumps({"id": folder_id, "type": folder_type})}
        return _static_list(
            await self._create_asset("/rest/asset/v1/staticLists.json", form, description, "list")
        )

    async def delete_static_list(self, list_id: int) -> None:
        """Delete a static list."""
        await self._result(
            "POST",
            f"/rest/asset/v1/staticList/{int(list_id)}/delete.json",
        )

    # ------------------------------------------------------------------ leads

    async def find_leads(
        self, filter_type: str, values: Sequence[str], fields: Sequence[str] | None = None
    ) -> list[Lead]:
        """Leads whose `filter_type` is one of `values` (300 per call, every page)."""
        leads: list[Lead] = []
        unique = list(dict.fromkeys(str(v) for v in values))
        for chunk in _chunks(unique):
            params = [
                ("filterType", filter_type),
                ("filterValues", ",".join(chunk)),
                ("batchSize", str(BATCH)),
            ]
            if fields:
                params.append(("fields", ",".join(fields)))
            pages = await self._paged("/rest/v1/leads.json", params, records=len(chunk))
            leads.extend(_lead(raw) for raw in pages)
        return leads

    async def get_lead(self, lead_id: int, fields: Sequence[str] | None = None) -> Lead | None:
        """The lead with this id, or None."""
        params = [("fields", ",".join(fields))] if fields else None
        result = await self._result("GET", f"/rest/v1/lead/{int(lead_id)}.json", params=params)
        return _lead(result[0]) if result else None

    async def sync_leads(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        action: SyncAction,
        lookup_field: str | None = None,
        partition_name: str | None = None,
    ) -> list[RecordResult]:
        """Sync Leads in chunks of 300; one result per record, in input order.

        Creating actions are not idempotent: when a chunk may have been applied without an
        answer, `OutcomeUnknownError` carries the results of the earlier chunks.
        """
        idempotent = action not in _NON_IDEMPOTENT
        results: list[RecordResult] = []
        for chunk in _chunks(list(records)):
            body: dict[str, Any] = {"action": str(action), "input": [dict(r) for r in chunk]}
            if lookup_field:
                body["lookupField"] = lookup_field
            if partition_name:
                body["partitionName"] = partition_name
            try:
                raw = await self._result(
                    "POST",
                    "/rest/v1/leads.json",
                    endpoint="leads/sync",
                    json_body=body,
                    idempotent=idempotent,
                    records=len(chunk),
                )
            except MarketoError as exc:
                exc.completed = tuple(results)
                exc.first_unknown_index = len(results)
                raise
            if len(raw) != len(chunk):
                message = f"Sync Leads answered {len(raw)} results for {len(chunk)} records"
                error: MarketoError = (
                    UnavailableError(message, code=None, attempts=1, endpoint="leads/sync")
                    if idempotent
                    else OutcomeUnknownError(message, code=None, endpoint="leads/sync")
                )
                error.completed = tuple(results)
                error.first_unknown_index = len(results)
                raise error
            results.extend(_record_result(r) for r in raw)
        return results

    # ------------------------------------------------------- list membership

    async def _membership(
        self, method: str, path: str, lead_ids: Sequence[int], *, endpoint: str | None = None
    ) -> list[MembershipResult]:
        out: list[MembershipResult] = []
        for chunk in _chunks(list(dict.fromkeys(int(i) for i in lead_ids))):
            if method == "GET":
                raw = await self._result(
                    "GET",
                    path,
                    endpoint=endpoint,
                    params=[("id", str(i)) for i in chunk],
                    records=len(chunk),
                )
            else:
                raw = await self._result(
                    method,
                    path,
                    endpoint=endpoint,
                    json_body={"input": [{"id": i} for i in chunk]},
                    records=len(chunk),
                )
            out.extend(
                MembershipResult(
                    id=int(r.get("id", 0)),
                    status=str(r.get("status", "")),
                    reasons=_reasons(r.get("reasons")),
                )
                for r in raw
            )
        return out

    async def add_to_list(self, list_id: int, lead_ids: Sequence[int]) -> list[MembershipResult]:
        """Add leads to a static list (300 ids per call)."""
        return await self._membership(
            "POST",
            f"/rest/v1/lists/{int(list_id)}/leads.json",
            lead_ids,
            endpoint="lists/leads/add",
        )

    async def remove_from_list(
        self, list_id: int, lead_ids: Sequence[int]
    ) -> list[MembershipResult]:
        """Remove leads from a static list (300 ids per call; 1015 means not a member)."""
        return await self._membership(
            "DELETE",
            f"/rest/v1/lists/{int(list_id)}/leads.json",
            lead_ids,
            endpoint="lists/leads/remove",
        )

    async def is_member(self, list_id: int, lead_ids: Sequence[int]) -> list[MembershipResult]:
        """Whether each lead is a member of the list (300 ids per call)."""
        return await self._membership(
            "GET",
            f"/rest/v1/lists/{int(list_id)}/leads/ismember.json",
            lead_ids,
        )

    async def list_members(self, list_id: int, fields: Sequence[str] | None = None) -> list[Lead]:
        """Every member of a static list (all pages)."""
        params = [("batchSize", str(BATCH))]
        if fields:
            params.append(("fields", ",".join(fields)))
        raw = await self._paged(f"/rest/v1/lists/{int(list_id)}/leads.json", params)
        return [_lead(r) for r in raw]

    async def list_members_page(
        self,
        list_id: int,
        fields: Sequence[str] | None = None,
        *,
        page_token: str | None = None,
        batch_size: int = BATCH,
    ) -> LeadPage:
        """One page of a static list's members (Get Leads by List); pass the page's
        `next_page_token` for the next one."""
        params = [("batchSize", str(min(BATCH, max(1, batch_size))))]
        if fields:
            params.append(("fields", ",".join(fields)))
        if page_token:
            params.append(("nextPageToken", page_token))
        answer = await self._request(
            "GET",
            f"/rest/v1/lists/{int(list_id)}/leads.json",
            params=params,
        )
        body = answer.body if isinstance(answer.body, Mapping) else {}
        leads = tuple(_lead(r) for r in body.get("result") or [] if isinstance(r, Mapping))
        token = body.get("nextPageToken")
        more = bool(body.get("moreResult")) and bool(token)
        return LeadPage(leads=leads, next_page_token=str(token) if more else None)

    # ------------------------------------------------------- delete and merge

    async def delete_leads(self, lead_ids: Sequence[int]) -> list[RecordResult]:
        """Delete leads (300 ids per call); one result per distinct id, "deleted" or "skipped"
        with its reason (1004: no such lead)."""
        out: list[RecordResult] = []
        for chunk in _chunks(list(dict.fromkeys(int(i) for i in lead_ids))):
            raw = await self._result(
                "POST",
                "/rest/v1/leads/delete.json",
                json_body={"input": [{"id": i} for i in chunk]},
                records=len(chunk),
            )
            out.extend(_record_result(r) for r in raw)
        return out

    async def merge_leads(self, winner_id: int, loser_ids: Sequence[int]) -> None:
        """Merge up to 25 leads into `winner_id`: the losers cease to exist (a look-up by their
        id finds nothing; Marketo does not redirect it), their list memberships move to the
        winner, which keeps its values and takes blank ones from them. Not retried when the
        outcome is unknown."""
        ids = ",".join(str(int(i)) for i in dict.fromkeys(loser_ids))
        await self._request(
            "POST",
            f"/rest/v1/leads/{int(winner_id)}/merge.json",
            params=[("leadIds", ids)],
            idempotent=False,
        )

    # ------------------------------------------------------------ bulk extract

    async def create_export(
        self, fields: Sequence[str], *, static_list_id: int, file_format: str = "CSV"
    ) -> ExportJob:
        """Create a bulk extract of a static list's members (status "Created"; enqueue it). A
        job created twice after a lost answer is harmless: it is never enqueued and expires."""
        body = {
            "fields": list(fields),
            "format": file_format,
            "filter": {"staticListId": int(static_list_id)},
        }
        path = "/bulk/v1/leads/export/create.json"
        result = await self._result("POST", path, json_body=body)
        if not result:
            raise UnavailableError(
                "Marketo answered no export job", code=None, attempts=1, endpoint=endpoint_of(path)
            )
        return _export_job(result[0])

    async def _export_call(self, method: str, export_id: str, action: str) -> ExportJob:
        endpoint = f"bulk/leads/export/{action}"
        result = await self._result(
            method, f"/bulk/v1/leads/export/{_segment(export_id)}/{action}.json", endpoint=endpoint
        )
        if not result:
            raise RejectedError("1013", f"No export job {export_id}", endpoint=endpoint)
        return _export_job(result[0])

    async def enqueue_export(self, export_id: str) -> ExportJob:
        """Queue an extract; a job already queued or processing (1029 "Job already queued")
        answers its status. A full queue is retried; a spent daily export allowance raises
        `QuotaExhaustedError` (code 1029) until the reset."""
        try:
            return await self._export_call("POST", export_id, "enqueue")
        except RejectedError as exc:
            if exc.code != "1029":
                raise
            return await self.export_status(export_id)

    async def export_status(self, export_id: str) -> ExportJob:
        """The status of an extract (file size and checksum once Completed)."""
        return await self._export_call("GET", export_id, "status")

    async def cancel_export(self, export_id: str) -> ExportJob:
        """Cancel an extract that has not finished."""
        return await self._export_call("POST", export_id, "cancel")

    async def export_file(self, export_id: str) -> str:
        """The file of a Completed extract."""
        return await self._file(
            f"/bulk/v1/leads/export/{_segment(export_id)}/file.json",
            endpoint="bulk/leads/export/file",  # export ids are not numbers
        )

    # ------------------------------------------------------------ bulk import

    async def create_import(
        self,
        csv_bytes: bytes,
        *,
        lookup_field: str | None = None,
        list_id: int | None = None,
        partition_name: str | None = None,
    ) -> ImportJob:
        """Queue a bulk lead import of a CSV file; not retried when the outcome is unknown."""
        form = {"format": "csv"}
        if lookup_field:
            form["lookupField"] = lookup_field
        if list_id is not None:
            form["listId"] = str(int(list_id))
        if partition_name:
            form["partitionName"] = partition_name
        endpoint = "bulk/leads/import"  # the path alone names it bulk/leads
        result = await self._result(
            "POST",
            "/bulk/v1/leads.json",
            endpoint=endpoint,
            form=form,
            files={"file": ("leads.csv", csv_bytes, "text/csv")},
            idempotent=False,
        )
        if not result:
            raise OutcomeUnknownError(
                "Marketo answered no import job", code=None, endpoint=endpoint
            )
        return _import_job(result[0])

    async def import_status(self, batch_id: int) -> ImportJob:
        """The status of a bulk import job."""
        path = f"/bulk/v1/leads/batch/{int(batch_id)}.json"
        result = await self._result("GET", path)
        if not result:
            raise RejectedError("1013", f"No import job {batch_id}", endpoint=endpoint_of(path))
        return _import_job(result[0])

    async def import_failures(self, batch_id: int) -> str:
        """The failures file of a bulk import (CSV with an "Import Failure Reason" column)."""
        return await self._file(f"/bulk/v1/leads/batch/{int(batch_id)}/failures.json")

    async def import_warnings(self, batch_id: int) -> str:
        """The warnings file of a bulk import (CSV with an "Import Warning Reason" column)."""
        return await self._file(f"/bulk/v1/leads/batch/{int(batch_id)}/warnings.json")

    async def _file(self, path: str, *, endpoint: str | None = None) -> str:
        answer = await self._request("GET", path, endpoint=endpoint, envelope=False)
        if answer.body is not None and not isinstance(answer.body, str):
            return ""
        return answer.text


def _segment(value: str) -> str:
    """`value` as one URL path segment (export ids are Marketo's UUIDs)."""
    return quote(str(value), safe="")


_WHOLE_ONLY_BELOW = 8
"""A secret shorter than this is masked only where it stands whole: its letters are likely to
occur in ordinary words. A longer one is masked wherever it occurs."""


def _mask_whole(text: str, value: str) -> str:
    """`text` with `value` masked; a short value only where it stands whole (as a query or
    JSON value is), never inside a longer word: masking its letters everywhere garbles the
    message (and tells the reader which letters the secret has)."""
    if len(value) >= _WHOLE_ONLY_BELOW:
        return text.replace(value, "***")
    start = r"(?<!\w)" if re.match(r"\w", value[0]) else ""
    end = r"(?!\w)" if re.match(r"\w", value[-1]) else ""
    return re.sub(start + re.escape(value) + end, "***", text)
