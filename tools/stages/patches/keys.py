"""Encrypted vendor patches: `NAME.patch.age` files in a series, readable only with the key.

A chip vendor may ship patches for code it may not publish. Such a patch is an age-encrypted git mail
(ASCII armor; see tools/mech/age.py). The key is an age identity (`AGE-SECRET-KEY-1...`, as `age-keygen`
writes it) from outside the repository: the file that FLAGREL_PATCH_KEY_FILE names, or the value of
FLAGREL_PATCH_KEY. The public half(s) it is encrypted to are listed, one `age1...` a line, in the part's
`recipients` file (patches/vllm/<part>/recipients): export encrypts changed patches to them again.

The plaintext exists only in memory, in workspaces and in build contexts: never in patches/, logs,
labels or records.
"""

from __future__ import annotations

import functools
import os
from collections import namedtuple
from pathlib import Path

from tools import PROJECT_ROOT
from tools.core import paths
from tools.core.errors import UserError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the quick commands load no typing)
if TYPE_CHECKING:
    from typing import Any

KEY_FILE_ENV = "FLAGREL_PATCH_KEY_FILE"
KEY_ENV = "FLAGREL_PATCH_KEY"
SEALED_SUFFIX = ".age"
RECIPIENTS = "recipients"


class Unreadable(Exception):
    """An encrypted patch this process cannot read; str() says which and what key it needs."""


class Keyring(namedtuple("Keyring", "identities source")):
    __slots__ = ()
    identities: tuple[Any, ...]
    source: str  # where the key came from, for messages ("FLAGREL_PATCH_KEY_FILE=/path"); never the key

    @property
    def public_keys(self) -> list[str]:
        from tools.mech import age

        return [age.public_key(i) for i in self.identities]


def _outside_repo(path: Path) -> None:
    real = path.resolve()
    for inside in (PROJECT_ROOT.resolve(), paths.patches_dir().resolve()):
        if real == inside or inside in real.parents:
            raise UserError(f"the patch key file lies inside {inside}", where=f"{KEY_FILE_ENV}={path}",
                            fix="keep keys outside the repository (e.g. ~/.config/flagrelease/patch-key.txt, "
                                "mode 600) and point the variable there")


@functools.cache
def _keyring(key_file: str | None, key_set: bool) -> Keyring | None:
    if key_file:
        path = Path(key_file).expanduser()
        _outside_repo(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read the patch key file: {exc.strerror}", where=f"{KEY_FILE_ENV}={path}",
                            fix="point it at an age identity file (age-keygen -o FILE)") from exc
        source = f"{KEY_FILE_ENV}={path}"
    elif key_set:
        text, source = os.environ.get(KEY_ENV, ""), KEY_ENV
    else:
        return None
    from tools.mech import age

    try:
        return Keyring(tuple(age.parse_identities(text)), source)
    except age.AgeError as exc:
        raise UserError(f"the patch key is not an age identity: {exc}", where=source,
                        fix="use a key file made by `age-keygen` (lines AGE-SECRET-KEY-1...)") from exc


def keyring() -> Keyring | None:
    """The key from the environment (file first), or None when neither variable is set."""
    return _keyring(os.environ.get(KEY_FILE_ENV) or None, bool(os.environ.get(KEY_ENV)))


def recipients_file(folder: Path) -> Path:
    return folder / RECIPIENTS


def recipients(folder: Path) -> list[str]:
    from tools.mech import age

    path = recipients_file(folder)
    if not path.is_file():
        return []
    try:
        return age.parse_recipients(path.read_text(encoding="utf-8"))
    except age.AgeError as exc:
        raise UserError(f"bad recipients file: {exc}", where=str(path),
                        fix="one age public key (age1...) a line; `#` starts a comment") from exc


def needed_key(folder: Path) -> str:
    """What a reader needs, in words: the variables and the public keys the part is encrypted to."""
    listed = recipients(folder)
    to = (f"the age identity of {' or '.join(listed)} ({recipients_file(folder)})" if listed
          else f"the age identity it was encrypted to (no {recipients_file(folder)} names it)")
    return f"{to}, in the file {KEY_FILE_ENV} names or in {KEY_ENV}"


_PLAIN: dict[str, bytes] = {}  # sha256 of the ciphertext -> plaintext, for this process only


def decrypt(path: Path, data: bytes, sha256: str) -> bytes:
    """The plaintext of an encrypted patch; Unreadable when there is no key or it does not fit."""
    if sha256 in _PLAIN:
        return _PLAIN[sha256]
    from tools.mech import age

    ring = keyring()
    if ring is None:
        raise Unreadable(f"no key: {needed_key(path.parent)}")
    if not age.is_age(data):
        raise Unreadable("not an age file (it should start with -----BEGIN AGE ENCRYPTED FILE-----)")
    try:
        plain = age.decrypt(data, ring.identities)
    except age.AgeError as exc:
        raise Unreadable(f"{exc} with the key from {ring.source} (public key {', '.join(ring.public_keys)}); "
                         f"it needs {needed_key(path.parent)}") from None
    _PLAIN[sha256] = plain
    return plain


def encrypt_for(folder: Path, plaintext: bytes, name: str) -> bytes:
    """Ciphertext for a part's recipients file, or for the public half of the key in use."""
    listed = recipients(folder)
    if not listed:
        ring = keyring()
        if ring is None:
            raise UserError(f"cannot encrypt {name}: no {recipients_file(folder)} and no key",
                            where=str(folder / name),
                            fix=f"list the age public keys (age1...) in {recipients_file(folder)}, "
                                f"or set {KEY_FILE_ENV}")
        listed = ring.public_keys
    from tools.mech import age

    return age.encrypt(plaintext, listed)
