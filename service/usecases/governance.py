"""Data-usage policies: which source labels a destination's marketing actions may not export.

A policy file is JSON: `[{"name": "No sensitive data in email", "marketing_action":
"email_targeting", "labels": ["C9", "S1"]}, ...]`. Activate refuses a mapping whose source field
carries a label that a policy forbids for one of the destination's marketing actions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.domain import FieldMapping


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    marketing_action: str
    labels: frozenset[str]


@dataclass(frozen=True, slots=True)
class PolicyViolation:
    index: int
    """Index of the mapping row."""
    source: str
    label: str
    policy: str
    marketing_action: str


class PolicyFileError(ValueError):
    """The policy file cannot be used; the message says where and why."""


def parse_policies(data: Any, *, source: str = "policies") -> tuple[Policy, ...]:
    if not isinstance(data, list):
        raise PolicyFileError(f"{source}: expected a JSON array of policies")
    policies = []
    for index, entry in enumerate(data):
        where = f"{source}[{index}]"
        if not isinstance(entry, dict):
            raise PolicyFileError(f"{where}: expected an object")
        name, action, labels = entry.get("name"), entry.get("marketing_action"), entry.get("labels")
        if not isinstance(name, str) or not name:
            raise PolicyFileError(f"{where}.name: a non-empty string is required")
        if not isinstance(action, str) or not action:
            raise PolicyFileError(f"{where}.marketing_action: a non-empty string is required")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise PolicyFileError(f"{where}.labels: a list of strings is required")
        policies.append(Policy(name, action, frozenset(labels)))
    return tuple(policies)


def load_policies(path: Path | None) -> tuple[Policy, ...]:
    if path is None:
        return ()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PolicyFileError(f"{path}: {error}") from None
    return parse_policies(data, source=str(path))


def violations(
    mappings: Sequence[FieldMapping],
    marketing_actions: Iterable[str],
    policies: Iterable[Policy],
) -> list[PolicyViolation]:
    """Every (mapping row, label, policy) that forbids exporting the row's source."""
    actions = set(marketing_actions)
    found = []
    for policy in policies:
        if policy.marketing_action not in actions:
            continue
        for index, mapping in enumerate(mappings):
            for label in mapping.labels:
                if label in policy.labels:
                    found.append(
                        PolicyViolation(
                            index, mapping.source, label, policy.name, policy.marketing_action
                        )
                    )
    return found
