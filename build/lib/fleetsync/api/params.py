"""Query parameters: each declared once, used both to validate a request and to describe
it in /openapi.json, so the two cannot disagree.

Validation is strict because a typo should not silently return the default
page: an unknown, repeated, non-numeric or out-of-range parameter is a 400.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import bottle

from .errors import bad_request

_DIGITS = re.compile(r"[0-9]{1,19}")   # no sign, no spaces; 19 digits covers int64
INT64_MAX = 2 ** 63 - 1


@dataclass(frozen=True)
class IntParam:
    name: str
    description: str
    minimum: int
    maximum: int
    default: int | None = None

    def parse(self, raw: str) -> int:
        if _DIGITS.fullmatch(raw) and self.minimum <= int(raw) <= self.maximum:
            return int(raw)
        raise bad_request(f"parameter {self.name!r} must be an integer "
                          f"from {self.minimum} to {self.maximum}, not {raw[:40]!r}")

    def schema(self) -> dict:
        schema = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        if self.default is not None:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True)
class ChoiceParam:
    name: str
    description: str
    choices: tuple[str, ...]
    default: None = None

    def parse(self, raw: str) -> str:
        if raw in self.choices:
            return raw
        raise bad_request(f"parameter {self.name!r} must be one of "
                          f"{', '.join(self.choices)}, not {raw[:40]!r}")

    def schema(self) -> dict:
        return {"type": "string", "enum": list(self.choices)}


@dataclass(frozen=True)
class TextParam:
    name: str
    description: str
    max_length: int = 256
    default: None = None

    def parse(self, raw: str) -> str:
        if 1 <= len(raw) <= self.max_length:
            return raw
        raise bad_request(f"parameter {self.name!r} must have 1 to "
                          f"{self.max_length} characters")

    def schema(self) -> dict:
        return {"type": "string", "minLength": 1, "maxLength": self.max_length}


Param = IntParam | ChoiceParam | TextParam


def parse_query(params: tuple[Param, ...]) -> dict:
    """The request's query parameters, validated: {name: value or default}."""
    query = bottle.request.query
    known = {p.name: p for p in params}
    values = {p.name: p.default for p in params}
    for name in query.keys():
        if name not in known:
            allowed = ", ".join(known) or "none"
            raise bad_request(f"unknown query parameter {name[:40]!r} (allowed: {allowed})")
        given = query.getall(name)
        if len(given) > 1:
            raise bad_request(f"query parameter {name!r} is given more than once")
        try:
            # Bottle decodes the query as latin-1; the client sent UTF-8.
            raw = given[0].encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise bad_request(f"query parameter {name!r} is not valid UTF-8") from None
        values[name] = known[name].parse(raw)
    return values
