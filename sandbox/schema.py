"""The lead schema: field definitions, Describe output and value validation."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from sandbox.settings import FieldSpec

LeadValue = str | int | float | bool | None


def _std(
    name: str,
    data_type: str,
    display: str,
    length: int | None = None,
    *,
    soap: str | None = None,
    searchable: bool = False,
    read_only: bool = False,
    crm: bool = False,
) -> FieldSpec:
    return FieldSpec(
        name=name,
        data_type=data_type,
        display_name=display,
        length=length,
        searchable=searchable,
        read_only=read_only,
        crm_managed=crm,
        soap_name=soap,
    )


# The standard fields of a real instance (names, types and SOAP names as a production
# describe.json reports them); fields without a SOAP name are REST-only there too.
STANDARD_FIELDS: tuple[FieldSpec, ...] = (
    _std("id", "integer", "Id", soap="Id", searchable=True, read_only=True),
    _std("company", "string", "Company Name", 255, soap="Company"),
    _std("site", "string", "Site", 255, soap="Site"),
    _std("billingStreet", "text", "Billing Address", soap="BillingStreet"),
    _std("billingCity", "string", "Billing City", 255, soap="BillingCity"),
    _std("billingState", "string", "Billing State", 255, soap="BillingState"),
    _std("billingCountry", "string", "Billing Country", 255, soap="BillingCountry"),
    _std("billingPostalCode", "string", "Billing Postal Code", 255, soap="BillingPostalCode"),
    _std("website", "url", "Website", 255, soap="Website"),
    _std("mainPhone", "phone", "Main Phone", 255, soap="MainPhone"),
    _std("annualRevenue", "currency", "Annual Revenue", soap="AnnualRevenue"),
    _std("numberOfEmployees", "integer", "Num Employees", soap="NumberOfEmployees"),
    _std("industry", "string", "Industry", 255, soap="Industry"),
    _std("sicCode", "string", "SIC Code", 40, soap="SICCode"),
    _std("mktoCompanyNotes", "string", "Company Notes", 255, soap="mktoCompanyNotes"),
    _std("externalCompanyId", "string", "External Company Id", 100),
    _std(
        "leadPartitionId",
        "reference",
        "Lead Partition ID",
        soap="Lead Partition ID",
        searchable=True,
        read_only=True,
    ),
    _std("salutation", "string", "Salutation", 255, soap="Salutation"),
    _std("firstName", "string", "First Name", 255, soap="FirstName"),
    _std("middleName", "string", "Middle Name", 255, soap="MiddleName"),
    _std("lastName", "string", "Last Name", 255, soap="LastName"),
    _std("email", "email", "Email Address", 255, soap="Email", searchable=True),
    _std("phone", "phone", "Phone Number", 255, soap="Phone"),
    _std("mobilePhone", "phone", "Mobile Phone Number", 255, soap="MobilePhone"),
    _std("fax", "phone", "Fax Number", 255, soap="Fax"),
    _std("title", "string", "Job Title", 255, soap="Title"),
    _std("contactCompany", "reference", "Contact Company", soap="Contact Company", read_only=True),
    _std("dateOfBirth", "date", "Date of Birth", soap="DateofBirth"),
    _std("address", "text", "Address", soap="Address"),
    _std("city", "string", "City", 255, soap="City"),
    _std("state", "string", "State", 255, soap="State"),
    _std("country", "string", "Country", 255, soap="Country"),
    _std("postalCode", "string", "Postal Code", 255, soap="PostalCode"),
    _std("personTimeZone", "string", "Person Time Zone", 255, read_only=True),
    _std("originalSourceType", "string", "Original Source Type", 255, read_only=True),
    _std("originalSourceInfo", "string", "Original Source Info", 255, read_only=True),
    _std("leadSource", "string", "Person Source", 255, soap="LeadSource"),
    _std("leadStatus", "string", "Lead Status", 255, soap="LeadStatus"),
    _std("leadScore", "integer", "Lead Score", soap="LeadScore"),
    _std("unsubscribed", "boolean", "Unsubscribed", soap="Unsubscribed"),
    _std("unsubscribedReason", "text", "Unsubscribed Reason", soap="UnsubscribedReason"),
    _std("emailInvalid", "boolean", "Email Invalid", soap="EmailInvalid"),
    _std("emailInvalidCause", "string", "Email Invalid Cause", 255, soap="EmailInvalidCause"),
    _std("doNotCall", "boolean", "Do Not Call", soap="DoNotCall"),
    _std("doNotCallReason", "string", "Do Not Call Reason", 512, soap="DoNotCallReason"),
    _std("marketingSuspended", "boolean", "Marketing Suspended", soap="MarketingSuspended"),
    _std("isAnonymous", "boolean", "Anonymous", read_only=True),
    _std("mktoName", "string", "Full Name", 255, read_only=True),
    _std("cookies", "string", "Cookies", 255, searchable=True),
    _std("ecids", "string", "ECIDs", 255, read_only=True),
    _std("externalSalesPersonId", "string", "External Sales Person Id", 100),
    _std("twitterId", "string", "Twitter Id", 255, searchable=True),
    _std("facebookId", "string", "Facebook Id", 255, searchable=True),
    _std("linkedInId", "string", "LinkedIn Id", 255, searchable=True),
    _std(
        "sfdcAccountId", "string", "SFDC Account Id", 18, searchable=True, read_only=True, crm=True
    ),
    _std(
        "sfdcContactId", "string", "SFDC Contact Id", 18, searchable=True, read_only=True, crm=True
    ),
    _std("sfdcLeadId", "string", "SFDC Lead Id", 18, searchable=True, read_only=True, crm=True),
    _std(
        "sfdcLeadOwnerId",
        "string",
        "SFDC Lead Owner Id",
        18,
        searchable=True,
        read_only=True,
        crm=True,
    ),
    _std("sfdcOpptyId", "string", "SFDC Oppty Id", 18, searchable=True, read_only=True, crm=True),
    _std("createdAt", "datetime", "Created At", read_only=True),
    _std("updatedAt", "datetime", "Updated At", read_only=True),
)

DEFAULT_READ_FIELDS: tuple[str, ...] = (
    "id",
    "updatedAt",
    "lastName",
    "email",
    "createdAt",
    "firstName",
)

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class InvalidValue(Exception):
    """A value that does not fit its field's data type (record-level 1003)."""


class Schema:
    """The lead fields of one instance."""

    def __init__(self, custom_fields: tuple[FieldSpec, ...]) -> None:
        self.fields: dict[str, FieldSpec] = {f.name: f for f in STANDARD_FIELDS}
        for spec in custom_fields:
            if spec.name in self.fields:
                raise ValueError(f"field {spec.name!r} already exists")
            self.fields[spec.name] = spec
        self.searchable: tuple[str, ...] = tuple(
            f.name for f in self.fields.values() if f.searchable
        )

    def add(self, spec: FieldSpec) -> None:
        """Add a custom field that is not searchable (searchable ones are indexed at reset)."""
        if spec.name in self.fields:
            raise ValueError(f"field {spec.name!r} already exists")
        if spec.searchable:
            raise ValueError("searchable fields can only be defined at reset")
        self.fields[spec.name] = spec

    def delete(self, name: str) -> None:
        """Delete a custom field that is not searchable, as an administrator can in Marketo."""
        spec = self.fields.get(name)
        if spec is None or not spec.custom:
            raise ValueError(f"no custom field {name!r}")
        if spec.searchable:
            raise ValueError("searchable fields can only be removed at reset")
        del self.fields[name]

    def describe(self) -> list[dict[str, Any]]:
        """The `result` of describe.json."""
        out: list[dict[str, Any]] = []
        for number, spec in enumerate(self.fields.values(), start=1):
            item: dict[str, Any] = {
                "id": number,
                "displayName": spec.display_name or spec.name,
                "dataType": spec.data_type,
            }
            if spec.length is not None:
                item["length"] = spec.length
            item["rest"] = {"name": spec.name, "readOnly": spec.read_only}
            if spec.soap_name is not None or spec.custom:
                item["soap"] = {"name": spec.soap_name or spec.name, "readOnly": spec.read_only}
            out.append(item)
        return out

    def describe2(self) -> list[dict[str, Any]]:
        """The `result` of describe2.json."""
        fields: list[dict[str, Any]] = []
        for spec in self.fields.values():
            item: dict[str, Any] = {
                "name": spec.name,
                "displayName": spec.display_name or spec.name,
                "dataType": spec.data_type,
            }
            if spec.length is not None:
                item["length"] = spec.length
            item["updateable"] = not spec.read_only
            item["crmManaged"] = spec.crm_managed
            fields.append(item)
        return [
            {
                "name": "API Lead",
                "searchableFields": [[name] for name in self.searchable],
                "fields": fields,
            }
        ]

    def coerce(self, name: str, value: Any) -> LeadValue:
        """Convert a JSON or CSV value to the stored form, or raise InvalidValue."""
        spec = self.fields[name]
        if value is None or value == "":
            return None
        return _coerce(spec, value)


TEXT_TYPES = frozenset({"email", "string", "text", "phone", "url"})
"""Data types whose values are text."""


def _coerce(spec: FieldSpec, value: Any) -> LeadValue:
    kind = spec.data_type
    if isinstance(value, bool) and kind != "boolean":
        raise InvalidValue
    if kind in ("string", "text", "phone", "url"):
        if isinstance(value, int | float):
            value = str(value)
        if not isinstance(value, str) or (spec.length is not None and len(value) > spec.length):
            raise InvalidValue
        return value
    if kind == "email":
        if not isinstance(value, str) or not value.isascii() or not _EMAIL.match(value):
            raise InvalidValue
        if spec.length is not None and len(value) > spec.length:
            raise InvalidValue
        return value
    if kind in ("integer", "reference"):
        if isinstance(value, int):
            return value
        if isinstance(value, str) and _INTEGER.match(value.strip()):
            return int(value)
        raise InvalidValue
    if kind in ("float", "currency", "percent"):
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return float(value)
        raise InvalidValue
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise InvalidValue
    if kind == "date":
        if isinstance(value, str):
            try:
                return date.fromisoformat(value).isoformat()
            except ValueError:
                pass
        raise InvalidValue
    if kind == "datetime":
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidValue from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return iso_z(parsed.timestamp())
        raise InvalidValue
    raise InvalidValue


def iso_z(epoch: float) -> str:
    """Lead Database datetime form, e.g. `2021-11-23T22:57:08Z`."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def asset_time(epoch: float) -> str:
    """Asset API datetime form, e.g. `2021-11-23T22:57:24Z+0000`."""
    return iso_z(epoch) + "+0000"


def parse_time(value: str) -> float:
    """Parse an ISO-8601 datetime (a naive one is UTC) to epoch seconds."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
