"""Profiles mapped per second for a 10-field mapping on one core.

The rate is per CPU-second of this single-threaded process (`time.process_time`), so other work
on a shared machine does not distort it; the wall-clock rate is printed too.

Run: `.venv/bin/python bench/mapping.py [--seconds S]`. The last line is one JSON object:
`{"profiles_per_s": ..., "target": 30000, "ok": ...}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.domain import DEDUPE_TARGET, FieldMapping, MappingRejectedError
from service.mapping.mapper import FieldType, Mapper
from service.mapping.registry import PluginRegistry

TARGET = 30_000

MAPPINGS = [
    FieldMapping("identityMap.email", DEDUPE_TARGET, "lowercase"),
    FieldMapping("person.name.firstName", "firstName", "trim"),
    FieldMapping("person.name.lastName", "lastName", "trim"),
    FieldMapping("mobilePhone.number", "mobilePhone", "phone_e164", {"default_country": "SE"}),
    FieldMapping("workAddress.country", "country", "country_code"),
    FieldMapping("person.birthDate", "dateOfBirth", "date"),
    FieldMapping("loyalty.points", "loyaltyPoints"),
    FieldMapping("consents.marketing.any.val", "unsubscribed", "boolean"),
    FieldMapping("workEmail.address", "workEmailHash", "sha256"),
    FieldMapping("person.name.lastName,person.name.firstName", "fullName", "concat"),
]
FIELDS = [
    FieldType("email", "email", 255),
    FieldType("firstName", "string", 255),
    FieldType("lastName", "string", 255),
    FieldType("mobilePhone", "phone", 255),
    FieldType("country", "string", 255),
    FieldType("dateOfBirth", "date"),
    FieldType("loyaltyPoints", "integer"),
    FieldType("unsubscribed", "boolean"),
    FieldType("workEmailHash", "string", 64),
    FieldType("fullName", "string", 255),
]


def profile(i: int) -> dict[str, Any]:
    return {
        "identityMap": {"email": [{"id": f"Person{i}@Example.com", "primary": True}]},
        "person": {
            "name": {"firstName": f" Ada{i % 97} ", "lastName": "Lovelace"},
            "birthDate": f"19{i % 90 + 10}-0{i % 9 + 1}-1{i % 9}",
        },
        "mobilePhone": {"number": f"070-{i % 1000:03d} 45 67"},
        "workAddress": {"country": ("Sweden", "se", "United States", "Germany")[i % 4]},
        "loyalty": {"points": float(i % 10_000)},
        "consents": {"marketing": {"any": {"val": ("y", "n")[i % 2]}}},
        "workEmail": {"address": f"ada{i}@work.example"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time")
    args = parser.parse_args()
    registry = PluginRegistry.build(load_entry_points=False)
    mapper = Mapper(MAPPINGS, FIELDS, registry, dedupe_field="email")
    profiles = [profile(i) for i in range(2_000)]
    for p in profiles:  # warm-up, and proof that the data maps cleanly
        mapper.map_profile(p)
    mapped = rejected = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    deadline = started + args.seconds
    map_profile = mapper.map_profile
    while time.perf_counter() < deadline:
        for p in profiles:
            try:
                map_profile(p)
            except MappingRejectedError:
                rejected += 1
            mapped += 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    rate = mapped / cpu
    print(f"mapped {mapped} profiles ({rejected} rejected), 10 fields each")
    print(f"wall {elapsed:.2f} s: {mapped / elapsed:,.0f} profiles/s")
    print(f"cpu {cpu:.2f} s: {rate:,.0f} profiles/s on one core (target {TARGET:,})")
    print(json.dumps({"profiles_per_s": round(rate), "target": TARGET, "ok": rate >= TARGET}))


if __name__ == "__main__":
    main()
