"""One scenario, two paths: the REST engine and the bulk engine against fresh sandboxes.

The world is the seed's lead-matching world (duplicates across partitions, list members) plus
people whose writes Marketo refuses, people with a blank value, people joining two audiences.
`snapshot` describes the final Marketo state independently of the ids new leads got.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.delivery.engine import BatchResult, SyncEngine
from service.delivery.engine.bulk import BulkPolicy, BulkSyncEngine
from service.domain import (
    AudienceMembership,
    DesiredState,
    MappedProfile,
    MembershipStatus,
    Outcome,
    ProfileMapper,
    ProfileUpdate,
    SyncRules,
    WritePolicy,
)
from service.marketo.types import ImportJob
from tests.engine.sandbox_env import Sandbox, running_sandbox

EVENT = datetime(2026, 1, 1, 12, tzinfo=UTC)
R, X = "realized", "exited"

# (email, partition, firstName, lastName, updatedAt, twitterId); ids follow this order
SEEDED = [
    ("dup@x.io", "Default", "Old", "Dup", "2025-01-01T00:00:00Z", "@dup"),
    ("dup@x.io", "EMEA", "Newer", "Dup", "2025-06-01T00:00:00Z", "@dup2"),
    ("DUP@x.io", "Partners", "Oldest", "Dup", "2024-01-01T00:00:00Z", "@dup3"),
    ("partner@x.io", "Partners", "Pat", "Ner", "2025-03-01T00:00:00Z", "@partner"),
    ("tie@x.io", "Default", "TieA", None, "2025-02-01T00:00:00Z", "@tie"),
    ("tie@x.io", "Partners", "TieB", None, "2025-02-01T00:00:00Z", "@tie2"),
    ("leaver@x.io", "Default", "Lea", "Ver", "2025-01-01T00:00:00Z", "@leaver"),  # in a1
    ("bystander@x.io", "Default", "By", "Stander", "2025-01-01T00:00:00Z", "@by"),  # in a2
    ("score@x.io", "Default", "Sco", "Re", "2025-01-01T00:00:00Z", "@score"),
    ("blank@x.io", "EMEA", "Bla", "Nk", "2025-01-01T00:00:00Z", "@blank"),
]

# (update id, profile, memberships)
UPDATES: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    (
        "u_dup",
        {
            "email": "dup@x.io",
            "first": "Dana",
            "last": "Dup2",
            "handle": "@dup2",
            "city": 'Ville, "Nord"',
        },
        [("a1", R)],
    ),
    (
        "u_part",
        {"email": "partner@x.io", "first": "Pat", "last": "Partner2", "handle": "@partner"},
        [("a1", R), ("a2", "existing")],
    ),
    (
        "u_tie",
        {"email": "tie@x.io", "first": "Tia", "last": "Tie2", "handle": "@tie2"},
        [("a2", R)],
    ),
    (
        "u_leave",
        {"email": "leaver@x.io", "first": "Lea", "last": "Left", "handle": "@leaver"},
        [("a1", X)],
    ),
    ("u_new", {"email": "new@x.io", "first": "Nia", "last": "New", "handle": "@new"}, [("a1", R)]),
    (
        "u_new2",
        {"email": "new2@x.io", "first": "Nea", "last": "Two", "handle": "@new2"},
        [("a1", R), ("a2", R)],
    ),
    ("u_gone", {"email": "gone@x.io", "first": "Go", "last": "Ne", "handle": "@gone"}, [("a1", X)]),
    ("u_half", {"email": "half@x.io", "first": "Hal", "handle": "@half"}, [("a2", R)]),
    (
        "u_nope",
        {
            "email": "nope@x.io",
            "first": "No",
            "last": "Pe",
            "handle": "@nope",
            "consents": {"marketing": {"any": {"val": "n"}}},
        },
        [("a1", R)],
    ),
    # Marketo refuses the value: the update fails (1003) on both paths
    (
        "u_badscore",
        {"email": "score@x.io", "first": "Sco", "last": "Re2", "score": "lots", "handle": "@score"},
        [("a1", R)],
    ),
    # an e-mail Marketo refuses: the creation fails (1003) on both paths
    (
        "u_badmail",
        {"email": "no mail", "first": "Bad", "last": "Mail", "handle": "@bad"},
        [("a1", R)],
    ),
    # a blank value clears the field through REST; the bulk path sends it through REST too
    (
        "u_blank",
        {"email": "blank@x.io", "first": "Bla", "last": "Nk2", "city": "", "handle": "@blank"},
        [("a2", R)],
    ),
    (
        "u_plain",
        {
            "email": "plain@x.io",
            "first": "Pla",
            "last": "In",
            "handle": "@plain",
            "city": 'Q "C", Inc\nNext line',
        },
        [("a2", "existing")],
    ),
]


class ScenarioMapper:
    """email, firstName, lastName, city, leadScore (raw, unchecked) and twitterId from a flat
    profile; the dedupe value is `email` or, with `dedupe="handle"`, the twitterId."""

    NAMES = {
        "email": "email",
        "first": "firstName",
        "last": "lastName",
        "city": "city",
        "score": "leadScore",
        "handle": "twitterId",
    }

    def __init__(self, dedupe: str = "email") -> None:
        self.dedupe = dedupe

    def map_profile(self, profile: Mapping[str, Any]) -> MappedProfile:
        fields = {target: profile[key] for key, target in self.NAMES.items() if key in profile}
        return MappedProfile(dedupe_value=profile.get(self.dedupe), fields=fields)


def make_updates(
    updates: Sequence[tuple[str, dict[str, Any], list[tuple[str, str]]]] = UPDATES,
) -> list[ProfileUpdate]:
    return [
        ProfileUpdate(
            update_id=uid,
            profile_id="p-" + uid,
            event_time=EVENT,
            profile=profile,
            memberships=tuple(AudienceMembership(a, MembershipStatus(s)) for a, s in members),
        )
        for uid, profile, members in updates
    ]


def quick_policy(**changes: Any) -> BulkPolicy:
    """Every group imported, however small; quick polls."""
    settings: dict[str, Any] = {
        "min_import_rows": 1,
        "membership_import_min": 10_000,
        "poll_initial": 0.5,
        "poll_max": 2.0,
    }
    settings.update(changes)
    return BulkPolicy(**settings)


@dataclass
class Run:
    result: BatchResult
    leads: list[tuple[str, str, tuple[tuple[str, Any], ...]]]
    lists: dict[str, list[str]]
    jobs: list[ImportJob] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    imports: list[tuple[str | None, int | None, str | None, bytes]] = field(default_factory=list)

    @property
    def lookups(self) -> set[str | None]:
        return {lookup for lookup, _, _, _ in self.imports}

    @property
    def contents(self) -> list[bytes]:
        return [content for _, _, _, content in self.imports]

    def outcomes(self) -> dict[str, tuple[str, frozenset[str], str, str]]:
        return {o.update_id: describe(o) for o in self.result.outcomes}


def describe(outcome: Outcome) -> tuple[str, frozenset[str], str, str]:
    names = frozenset(
        a.type.value + (f":{a.audience_id}" if a.audience_id else "") for a in outcome.actions
    )
    return (outcome.kind.value, names, outcome.marketo_code, outcome.reason)


Hook = Callable[[Sandbox], Awaitable[None]]


class HookedPort:
    """The real client; `before_write` runs once before the first lead-creating write."""

    def __init__(self, sandbox: Sandbox, before_write: Hook | None) -> None:
        self.sandbox = sandbox
        self.client = sandbox.client
        self.before_write = before_write
        self.imports: list[tuple[str | None, int | None, str | None, bytes]] = []
        """(lookupField, listId, partitionName, file) of every import created."""

    async def _hook(self) -> None:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            await hook(self.sandbox)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def sync_leads(self, records: Any, **kwargs: Any) -> Any:
        if str(kwargs.get("action")) != "updateOnly":
            await self._hook()
        return await self.client.sync_leads(records, **kwargs)

    async def create_import(self, content: bytes, **kwargs: Any) -> ImportJob:
        if kwargs.get("lookup_field") != "id":
            await self._hook()
        self.imports.append(
            (
                kwargs.get("lookup_field"),
                kwargs.get("list_id"),
                kwargs.get("partition_name"),
                content,
            )
        )
        return await self.client.create_import(content, **kwargs)


async def run(
    rules: SyncRules,
    *,
    bulk: bool,
    updates: Sequence[ProfileUpdate] | None = None,
    policy: BulkPolicy | None = None,
    mapper: ProfileMapper | None = None,
    before_write: Hook | None = None,
    write_policies: Mapping[str, WritePolicy] | None = None,
    then: Sequence[ProfileUpdate] = (),
) -> Run:
    """Run the updates through a fresh sandbox; with `then`, run those next with the state the
    first batch left (as the store folds it in): the run shows the second batch."""
    async with running_sandbox() as sb:
        ids = await sb.seed(
            *(
                {
                    "email": e,
                    "firstName": f,
                    "partition": p,
                    "updatedAt": t,
                    "twitterId": tw,
                    **({"lastName": last} if last else {}),
                }
                for e, p, f, last, t, tw in SEEDED
            )
        )
        made = await sb.make_lists(["Audience 1", "Audience 2"])
        lists = {"a1": made["Audience 1"], "a2": made["Audience 2"]}
        await sb.client.add_to_list(lists["a1"], [ids[6]])
        await sb.client.add_to_list(lists["a2"], [ids[7]])
        before = await sb.calls()
        port: Any = HookedPort(sb, before_write)
        engine: SyncEngine
        if bulk:
            engine = BulkSyncEngine(
                port,
                rules,
                mapper or ScenarioMapper(),
                clock=sb.clock,
                policy=policy or quick_policy(),
                audience_lists=lists,
                write_policies=write_policies,
            )
        else:
            engine = SyncEngine(
                port,
                rules,
                mapper or ScenarioMapper(),
                audience_lists=lists,
                write_policies=write_policies,
            )
        result = await engine.sync(list(updates if updates is not None else make_updates()))
        if then:
            state = result.folded(DesiredState())
            before = await sb.calls()
            port.imports.clear()
            result = await engine.sync(list(then), state=state)
        after = await sb.calls()
        calls = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
        return Run(
            result=result,
            leads=await snapshot_leads(sb, set(ids)),
            lists=await snapshot_lists(sb, set(ids), lists),
            jobs=list(engine.jobs) if isinstance(engine, BulkSyncEngine) else [],
            calls=calls,
            imports=port.imports,
        )


def _ident(lead: Mapping[str, Any], seeded: set[int]) -> str:
    if lead["id"] in seeded:
        return f"seeded:{lead['id']}"
    return f"new:{lead['fields'].get('email')}:{lead['fields'].get('twitterId')}"


async def snapshot_leads(
    sb: Sandbox, seeded: set[int]
) -> list[tuple[str, str, tuple[tuple[str, Any], ...]]]:
    return sorted(
        (_ident(lead, seeded), lead["partition"], tuple(sorted(lead["fields"].items())))
        for lead in await sb.leads()
    )


async def snapshot_lists(
    sb: Sandbox, seeded: set[int], lists: Mapping[str, int]
) -> dict[str, list[str]]:
    by_id = {lead["id"]: lead for lead in await sb.leads()}
    members = await sb.lists()
    return {
        a: sorted(_ident(by_id[i], seeded) for i in members[list_id])
        for a, list_id in lists.items()
    }
