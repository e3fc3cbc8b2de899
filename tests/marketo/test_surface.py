"""The public surface the sync engine codes against: pinned."""

from __future__ import annotations

import inspect

from service.marketo import errors
from service.marketo.client import MarketoClient

METHODS = {
    "token": [],
    "describe": [],
    "describe2": [],
    "partitions": [],
    "workspaces": [],
    "folder_by_name": ["name", "workspace"],
    "create_folder": ["name", "parent_id", "parent_type", "description"],
    "static_list_by_name": ["name"],
    "static_list": ["list_id"],
    "create_static_list": ["name", "folder_id", "folder_type", "description"],
    "delete_static_list": ["list_id"],
    "find_leads": ["filter_type", "values", "fields"],
    "get_lead": ["lead_id", "fields"],
    "sync_leads": ["records", "action", "lookup_field", "partition_name"],
    "add_to_list": ["list_id", "lead_ids"],
    "remove_from_list": ["list_id", "lead_ids"],
    "is_member": ["list_id", "lead_ids"],
    "list_members": ["list_id", "fields"],
    "create_import": ["csv_bytes", "lookup_field", "list_id", "partition_name"],
    "import_status": ["batch_id"],
    "import_failures": ["batch_id"],
    "import_warnings": ["batch_id"],
    "usage": ["last_7_days"],
    "list_members_page": ["list_id", "fields", "page_token", "batch_size"],
    "delete_leads": ["lead_ids"],
    "merge_leads": ["winner_id", "loser_ids"],
    "create_export": ["fields", "static_list_id", "file_format"],
    "enqueue_export": ["export_id"],
    "export_status": ["export_id"],
    "cancel_export": ["export_id"],
    "export_file": ["export_id"],
}


def test_client_methods() -> None:
    for name, params in METHODS.items():
        method = getattr(MarketoClient, name)
        assert inspect.iscoroutinefunction(method), name
        assert list(inspect.signature(method).parameters)[1:] == params, name


def test_constructor() -> None:
    params = inspect.signature(MarketoClient.__init__).parameters
    assert list(params)[1:] == [
        "http",
        "base_url",
        "client_id",
        "client_secret",
        "limits",
        "clock",
        "retry",
        "observer",
        "seed_from_usage",
    ]


def test_error_tree() -> None:
    for error in (
        errors.AuthenticationError,
        errors.QuotaExhaustedError,
        errors.RejectedError,
        errors.UnavailableError,
        errors.OutcomeUnknownError,
    ):
        assert issubclass(error, errors.MarketoError)
