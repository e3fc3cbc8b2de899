"""Injected faults: errors, HTTP failures, dropped connections and delays by path prefix."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Messages of the injectable codes; 606 and 615 take theirs from the limit settings.
FAULT_CODES = {
    "601": "Access token invalid",
    "602": "Access token expired",
    "603": "Access denied",
    "604": "Request time-out",
    "606": "",
    "607": "Daily quota reached",
    "608": "API Temporarily Unavailable",
    "611": "System error",
    "713": "Transient Error",
    "615": "",
}


@dataclass
class Fault:
    """One rule; `remaining` None means it applies until removed (subject to probability);
    the first `skip` matching requests pass untouched."""

    path_prefix: str
    code: str | None
    http_status: int | None
    drop: bool
    remaining: int | None
    probability: float
    delay_ms: float
    skip: int = 0
    drop_after: bool = False
    """The request is carried out, then the connection drops without the answer (a write whose
    outcome the client cannot know)."""

    @classmethod
    def parse(cls, raw: Any) -> Fault:
        """Build a fault from its JSON form; raises ValueError."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("path_prefix"), str):
            raise ValueError("a fault needs a path_prefix")
        code = raw.get("code")
        http_status = raw.get("http_status")
        drop_after = raw.get("drop") == "after"
        drop = raw.get("drop", False) is True or code == "drop" or http_status == "drop"
        if drop or drop_after:
            code, http_status = None, None
        if code is not None:
            code = str(code)
            if code not in FAULT_CODES:
                raise ValueError(f"unsupported fault code {code}")
        if http_status is not None and (
            not isinstance(http_status, int) or not 400 <= http_status <= 599
        ):
            raise ValueError("http_status must be an HTTP error status")
        count = raw.get("count")
        probability = raw.get("probability", 1.0)
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer")
        if not isinstance(probability, int | float) or not 0 <= probability <= 1:
            raise ValueError("probability must be between 0 and 1")
        delay_ms = raw.get("delay_ms", 0)
        if not isinstance(delay_ms, int | float) or delay_ms < 0:
            raise ValueError("delay_ms must be a non-negative number")
        skip = raw.get("skip", 0)
        if not isinstance(skip, int) or skip < 0:
            raise ValueError("skip must be a non-negative integer")
        return cls(
            raw["path_prefix"],
            code,
            http_status,
            drop,
            count,
            float(probability),
            delay_ms,
            skip,
            drop_after,
        )


class Faults:
    """The active fault rules, consulted in the order they were added."""

    def __init__(self) -> None:
        self.rules: list[Fault] = []
        self._random = random.Random()

    def match(self, path: str) -> Fault | None:
        """The first rule that fires for this path, consuming one of its counts."""
        for rule in self.rules:
            if not path.startswith(rule.path_prefix):
                continue
            if rule.skip:
                rule.skip -= 1
                continue
            if rule.probability < 1 and self._random.random() >= rule.probability:
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self.rules.remove(rule)
            return rule
        return None
