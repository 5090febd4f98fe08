"""Image references, parsed by one strict grammar before they reach a Dockerfile or a command line.

    reference  := [registry[:port]/]path[:tag][@sha256:<64 hex>]
    registry   := host components (letters, digits, inner '-') joined by '.', or 'localhost'; optional :port
    path       := components of [a-z0-9] joined by '.', '_', '__' or '-'s, separated by '/'
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

This is Docker's distribution/reference grammar, restricted to sha256 digests. The first component is a
registry only when it holds a '.' or a ':', or is 'localhost' (as docker decides). Anything else, a space,
a newline, a quote or a '!' included, is refused with one message that names the offending part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tools.core.errors import UserError

_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
REGISTRY = re.compile(rf"^{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]{{1,5}})?$")
PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ALLOWED = re.compile(r"^[A-Za-z0-9._:/@-]+$")
MAX_NAME = 255
EXAMPLE = "registry.example.com:5000/team/base:1.0@sha256:<64 hex>"


@dataclass(frozen=True)
class ImageRef:
    registry: str | None
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.path}" if self.registry else self.path

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


class BadReference(ValueError):
    """Why a string is not an image reference (the message names the part)."""


def _parse(value: str) -> ImageRef:
    if not value:
        raise BadReference("it is empty")
    if not _ALLOWED.match(value):
        bad = next(ch for ch in value if not _ALLOWED.match(ch))
        raise BadReference(f"it contains {bad!r}; only letters, digits and . _ - : / @ may appear")
    rest, digest = value, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST.match(digest):
            raise BadReference(f"digest {digest!r} is not sha256:<64 lower-case hex>")
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not TAG.match(tag):
            raise BadReference(f"tag {tag!r} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
    if len(rest) > MAX_NAME:
        raise BadReference(f"the name is {len(rest)} characters long (at most {MAX_NAME})")
    parts = rest.split("/")
    registry = None
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry = first
        parts = parts[1:]
        if not REGISTRY.match(registry):
            raise BadReference(f"registry {registry!r} is not HOST[:PORT]")
    for part in parts:
        if not PATH_COMPONENT.match(part):
            raise BadReference(f"path component {part!r} is not lower-case letters and digits joined by . _ -")
    return ImageRef(registry=registry, path="/".join(parts), tag=tag, digest=digest)


def parse_image_ref(value: str, *, where: str) -> ImageRef:
    """The reference, or one UserError saying which part is wrong and what a good one looks like."""
    try:
        return _parse(value)
    except BadReference as exc:
        raise UserError(f"{value!r} is not an image reference: {exc}", where=where,
                        fix=f"give [REGISTRY[:PORT]/]PATH[:TAG][@sha256:DIGEST], e.g. {EXAMPLE}") from exc


def check_image_ref(value: str) -> str:
    """For pydantic validators: the value unchanged, or ValueError with the reason."""
    _parse(value)
    return value
