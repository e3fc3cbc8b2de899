"""Built-in transforms `country_code` and `country_name`: ISO 3166-1 alpha-2 and names."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from plugins._country_table import COUNTRIES
from service.hookspecs import Transform, TransformError, offer_transforms
from service.mapping.coercion import as_text

_ALIASES = {
    "usa": "US",
    "us": "US",
    "united states of america": "US",
    "america": "US",
    "uk": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "republic of korea": "KR",
    "korea republic of": "KR",
    "korea": "KR",
    "russian federation": "RU",
    "czech republic": "CZ",
    "holland": "NL",
    "the netherlands": "NL",
    "viet nam": "VN",
    "iran islamic republic of": "IR",
    "ivory coast": "CI",
    "turkiye": "TR",
    "uae": "AE",
    "deutschland": "DE",
    "espana": "ES",
    "brasil": "BR",
    "sverige": "SE",
    "schweiz": "CH",
    "suisse": "CH",
    "osterreich": "AT",
    "italia": "IT",
    "nippon": "JP",
    "burma": "MM",
    "swaziland": "SZ",
    "macedonia": "MK",
    "dr congo": "CD",
    "drc": "CD",
    "cape verde": "CV",
    "east timor": "TL",
    "vatican": "VA",
    "holy see": "VA",
}


def _key(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold().replace("&", " and "))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = re.sub(r"[^a-z0-9]+", " ", bare).split()
    return " ".join(words)


_BY_NAME: dict[str, str] = {}
for _code, _name in COUNTRIES.items():
    _BY_NAME[_key(_name)] = _code
    _BY_NAME.setdefault(_key(_name).removeprefix("the "), _code)
_BY_NAME.update({_key(alias): code for alias, code in _ALIASES.items()})


# No country name is longer than this, even written with extra spaces or punctuation: longer text
# is refused before it is normalised (Unicode decomposition can multiply a text's length by 18).
_LONGEST_NAME = 2 * max(len(name) for name in _BY_NAME)


# Country values repeat a lot and the function is pure, so a small cache pays for itself.
@lru_cache(maxsize=4096)
def lookup_code(text: str) -> str:
    """The alpha-2 code of a country name, alias or code (any case); raises TransformError."""
    stripped = text.strip()
    if len(stripped) == 2 and stripped.upper() in COUNTRIES:
        return stripped.upper()
    if len(stripped) > _LONGEST_NAME:
        raise TransformError(f"a text of {len(stripped):,} characters is not a known country")
    code = _BY_NAME.get(_key(stripped))
    if code is None:
        raise TransformError(f"{text!r} is not a known country")
    return code


def country_code(value: object) -> str | None:
    text = as_text(value)
    return None if text is None or not text.strip() else lookup_code(text)


def country_name(value: object) -> str | None:
    text = as_text(value)
    return None if text is None or not text.strip() else COUNTRIES[lookup_code(text)]


register_transforms = offer_transforms(
    Transform.from_function(
        "country_code",
        country_code,
        returns=(str,),
        description="A country name or code to its ISO 3166-1 alpha-2 code.",
    ),
    Transform.from_function(
        "country_name",
        country_name,
        returns=(str,),
        description="An ISO 3166-1 alpha-2 code (or a name) to the English short name.",
    ),
)
