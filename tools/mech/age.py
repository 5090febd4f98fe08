"""age encryption (https://age-encryption.org/v1) through pyrage, the Python binding of rage.

Files are ASCII-armored age (`-----BEGIN AGE ENCRYPTED FILE-----`): X25519 recipients, ChaCha20-Poly1305
payload; the `age` and `rage` command-line tools read and write the same files. Identities are the
`AGE-SECRET-KEY-1...` lines `age-keygen` writes (comments allowed); recipients are `age1...` public keys.
pyrage is imported on first use, so stacks without encrypted patches never load it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
BINARY_BEGIN = b"age-encryption.org/v1\n"
_IDENTITY = re.compile(r"^AGE-SECRET-KEY-1[0-9A-Z]+$")
_RECIPIENT = re.compile(r"^age1[0-9a-z]{58}$")


class AgeError(Exception):
    """A key or a file that age cannot use; the message says which and why (never key material)."""


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise AgeError("pyrage is not installed (pip install pyrage)") from exc
    return pyrage


def is_age(data: bytes) -> bool:
    return data.startswith((ARMOR_BEGIN, BINARY_BEGIN))


def parse_identities(text: str) -> list[Any]:
    """The identities in an age key file (or one key); comment and blank lines are skipped."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if not _IDENTITY.match(entry):
            raise AgeError(f"line {number} is not an age identity (AGE-SECRET-KEY-1...)")
        try:
            found.append(_pyrage().x25519.Identity.from_str(entry))
        except Exception as exc:  # pyrage raises its own IdentityError
            raise AgeError(f"line {number} is not a valid age identity") from exc
    if not found:
        raise AgeError("no AGE-SECRET-KEY-1... line")
    return found


def parse_recipients(text: str) -> list[str]:
    """The age1... public keys of a recipients file (one a line, comments allowed)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not _RECIPIENT.match(entry):
            raise AgeError(f"line {number} is not an age recipient (age1..., 62 characters)")
        found.append(entry)
    return found


def public_key(identity: Any) -> str:
    return str(identity.to_public())


def generate() -> tuple[str, str]:
    """A new (identity, recipient) pair as text."""
    identity = _pyrage().x25519.Identity.generate()
    return str(identity), public_key(identity)


def encrypt(plaintext: bytes, recipients: Sequence[str]) -> bytes:
    """ASCII-armored age for every recipient (each can decrypt alone)."""
    if not recipients:
        raise AgeError("no recipient to encrypt to")
    pyrage = _pyrage()
    keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    return bytes(pyrage.encrypt(plaintext, keys, armored=True))


def decrypt(ciphertext: bytes, identities: Sequence[Any]) -> bytes:
    """The plaintext; AgeError when no identity matches or the file is damaged (age authenticates)."""
    if not identities:
        raise AgeError("no identity to decrypt with")
    try:
        return bytes(_pyrage().decrypt(ciphertext, list(identities)))
    except Exception as exc:  # pyrage.DecryptError: wrong key, damaged or truncated file
        raise AgeError(f"cannot decrypt: {exc}") from exc
