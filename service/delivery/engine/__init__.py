"""The sync engine: plan a batch of profile updates, then resolve and write them to Marketo.

Typical use by the dispatcher::

    engine = SyncEngine(client, rules, mapper, audience_lists={"aud-1": 1001}, locks=shared_locks)
    result = await engine.sync(updates, state=stored_state)  # the batch's DesiredState
    # persist result.outcomes and the state it folds in, retry result.deferred later
"""

from service.delivery.engine.executor import (
    BATCH_SIZE,
    REASON_MISSING_REQUIRED,
    REASON_NO_MATCHING_LEAD,
    BatchResult,
    Deferred,
    DryRunResult,
    PlannedUpdate,
    SyncEngine,
    own_actions,
)
from service.delivery.engine.locks import KeyedLocks
from service.delivery.engine.planner import (
    REASON_CONSENT_REFUSED,
    REASON_MAPPING_REJECTED,
    REASON_NO_AUDIENCE,
    REASON_NO_DEDUPE_VALUE,
    REASON_STALE,
    REASON_SUPERSEDED_IN_BATCH,
    Plan,
    PlannedPerson,
    plan_batch,
)
from service.delivery.engine.ports import MarketoPort

__all__ = [
    "BATCH_SIZE",
    "REASON_CONSENT_REFUSED",
    "REASON_MAPPING_REJECTED",
    "REASON_MISSING_REQUIRED",
    "REASON_NO_AUDIENCE",
    "REASON_NO_DEDUPE_VALUE",
    "REASON_NO_MATCHING_LEAD",
    "REASON_STALE",
    "REASON_SUPERSEDED_IN_BATCH",
    "BatchResult",
    "Deferred",
    "DryRunResult",
    "KeyedLocks",
    "MarketoPort",
    "Plan",
    "PlannedPerson",
    "PlannedUpdate",
    "SyncEngine",
    "own_actions",
    "plan_batch",
]
