"""Built-in transform `phone_e164`: a phone number to E.164 (`+` and up to 15 digits).

A deliberately small implementation: international numbers (`+`, `00`, or `011` in the NANP) are
kept as dialled; national numbers get the calling code of the `default_country` option after their
trunk `0` is dropped. It checks length, not numbering plans.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from service.hookspecs import Transform, TransformError, TransformFunc, offer_transforms
from service.mapping.coercion import as_text, strip_extension

# Calling codes by ISO 3166 alpha-2 code, as "CC:code" pairs; countries missing here need numbers
# written in international form.
_CODES = (
    "US:1 CA:1 PR:1 GU:1 VI:1 AS:1 MP:1 BS:1 BB:1 JM:1 TT:1 DO:1 AG:1 BM:1 KY:1 "
    "GB:44 IE:353 FR:33 DE:49 NL:31 BE:32 LU:352 CH:41 AT:43 IT:39 SM:378 VA:39 ES:34 PT:351 "
    "DK:45 SE:46 NO:47 FI:358 IS:354 EE:372 LV:371 LT:370 PL:48 CZ:420 SK:421 HU:36 SI:386 "
    "HR:385 BA:387 RS:381 ME:382 MK:389 AL:355 GR:30 CY:357 MT:356 BG:359 RO:40 MD:373 UA:380 "
    "BY:375 RU:7 KZ:7 TR:90 GE:995 AM:374 AZ:994 IL:972 PS:970 JO:962 LB:961 SY:963 IQ:964 "
    "IR:98 SA:966 AE:971 QA:974 BH:973 KW:965 OM:968 YE:967 EG:20 MA:212 DZ:213 TN:216 LY:218 "
    "NG:234 GH:233 CI:225 SN:221 CM:237 KE:254 UG:256 TZ:255 RW:250 ET:251 ZA:27 NA:264 "
    "BW:267 ZW:263 ZM:260 MZ:258 AO:244 MU:230 IN:91 PK:92 BD:880 LK:94 NP:977 CN:86 HK:852 "
    "MO:853 TW:886 JP:81 KR:82 MN:976 VN:84 TH:66 MY:60 SG:65 ID:62 PH:63 KH:855 MM:95 "
    "AU:61 NZ:64 FJ:679 MX:52 GT:502 SV:503 HN:504 NI:505 CR:506 PA:507 CU:53 CO:57 VE:58 "
    "EC:593 PE:51 BO:591 CL:56 AR:54 UY:598 PY:595 BR:55"
)
CALLING_CODES: dict[str, str] = dict(pair.split(":") for pair in _CODES.split())
"""Calling code by country; the NANP countries share `1`."""

# Countries whose leading 0 is part of the subscriber number, not a trunk prefix.
_KEEPS_ZERO = frozenset({"IT", "SM", "VA"})
# Both patterns run in linear time (one character class each); extensions are cut off by
# plain string code (`strip_extension`), as a regular expression for them backtracks.
_ALLOWED = re.compile(r"\+?[0-9 ().\-/]+")
_EXTENSIONS = ("x", "ext", "ext.", "#")
_NON_DIGIT = re.compile(r"\D")


def to_e164(text: str, country: str) -> str:
    """`text` in E.164, national numbers read as numbers of `country`; raises TransformError."""
    raw = text.strip()
    if not raw.replace(" ", "").replace("-", "").isdigit():
        # Only numbers with more than digits need the slower checks.
        raw = strip_extension(raw, _EXTENSIONS)
    if not raw or not _ALLOWED.fullmatch(raw):
        raise TransformError(f"{text!r} is not a phone number")
    digits = _NON_DIGIT.sub("", raw)
    code = CALLING_CODES[country]
    if raw.startswith("+"):
        number = digits
    elif digits.startswith("00"):
        number = digits[2:]
    elif code == "1" and digits.startswith("011"):
        number = digits[3:]
    elif code == "1":
        national = digits[1:] if len(digits) == 11 and digits.startswith("1") else digits
        if len(national) != 10:
            raise TransformError(f"{text!r} is not a 10-digit {country} number")
        number = "1" + national
    else:
        national = digits if country in _KEEPS_ZERO else digits.removeprefix("0")
        number = code + national
    if not 7 <= len(number) <= 15 or number.startswith("0"):
        raise TransformError(f"{text!r} is not a valid international phone number")
    return "+" + number


def _prepare(options: Mapping[str, str]) -> TransformFunc:
    country = options.get("default_country", "US").upper()
    if country not in CALLING_CODES:
        raise ValueError(f"default_country {country!r} is not a supported ISO 3166 alpha-2 code")

    def phone_e164(value: object) -> str | None:
        if isinstance(value, float):
            raise TransformError("a phone number must be text, not a float")
        text = as_text(value)
        if text is None or not text.strip():
            return None
        return to_e164(text, country)

    return phone_e164


register_transforms = offer_transforms(
    Transform(
        name="phone_e164",
        prepare=_prepare,
        returns=(str,),
        description="A phone number in E.164 form, e.g. +14155550123.",
        options={"default_country": "ISO alpha-2 country of national numbers (default US)"},
        example_options={"default_country": "SE"},
    ),
)
