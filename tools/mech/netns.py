"""Reach servers that live in another process's network namespace (Linux; needs root: CAP_SYS_ADMIN).

A network namespace belongs to a thread, so `call_in` runs the function on a thread of its own that
joins the namespace first: every socket the function opens lives there, and the caller's threads stay
where they are. `interfaces` and `listening` read what the namespace has, through /proc/PID/net.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def _join(pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/proc/{pid}/ns/net", "rb") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise PermissionError(err, f"cannot join the network namespace of pid {pid}: {os.strerror(err)}")


def call_in(pid: int, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
    """fn(*args, **kwargs) inside the network namespace of process PID; its result, or its exception."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _join(pid)
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{pid}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def interfaces(pid: int) -> list[str]:
    """The network interfaces of PID's namespace (from /proc/PID/net/dev)."""
    lines = open(f"/proc/{pid}/net/dev", encoding="ascii").read().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines if ":" in line]


@dataclass(frozen=True)
class Listener:
    address: str
    port: int


def _hex_address(text: str) -> str:
    raw = bytes.fromhex(text)
    # /proc prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening(pid: int) -> list[Listener]:
    """Every TCP socket listening in PID's namespace (/proc/PID/net/tcp and tcp6, state 0A)."""
    found = []
    for table in ("tcp", "tcp6"):
        try:
            rows = open(f"/proc/{pid}/net/{table}", encoding="ascii").read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == "0A":
                address, port = fields[1].split(":")
                found.append(Listener(_hex_address(address), int(port, 16)))
    return sorted(set(found), key=lambda item: (item.address, item.port))
