"""The durable store: destinations, activations, the outbox and what became of each update.

`Store` (in `base`) is the interface; `SqliteStore` the embedded default. Open one with
`await SqliteStore.open(path, box)`.
"""

from service.store.base import (
    CLAIM_MAX_BYTES,
    ActivationRecord,
    AlertRecord,
    AppendResult,
    CommitListener,
    Dataflow,
    DataflowRun,
    DestinationNotFound,
    DestinationRecord,
    DestinationState,
    FencingError,
    InvalidPageToken,
    Lease,
    NewDestination,
    OutboxEntry,
    OutcomeRecord,
    Page,
    PendingStats,
    Store,
    StoreError,
    VersionConflict,
    Watermark,
)
from service.store.sqlite import SqliteStore

__all__ = [
    "CLAIM_MAX_BYTES",
    "ActivationRecord",
    "AlertRecord",
    "AppendResult",
    "CommitListener",
    "Dataflow",
    "DataflowRun",
    "DestinationNotFound",
    "DestinationRecord",
    "DestinationState",
    "FencingError",
    "InvalidPageToken",
    "Lease",
    "NewDestination",
    "OutboxEntry",
    "OutcomeRecord",
    "Page",
    "PendingStats",
    "SqliteStore",
    "Store",
    "StoreError",
    "VersionConflict",
    "Watermark",
]
