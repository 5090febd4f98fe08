"""The smoke checks: what a user's OpenAI client sees from a ready engine, each check on its own.

Vision-language releases (tests.smoke.images > 0) also get a real PNG, made here with zlib and struct,
sent as an image_url data URL; and, when the recipe declares limit_mm_per_prompt's image limit, one image
more than that, which the engine must refuse with a 400 and go on serving.
"""

from __future__ import annotations

import base64
import ipaddress
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from rich.markup import escape

from tools.core import labels
from tools.core.recipe import Recipe
from tools.mech.console import info


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def png(width: int, height: int, seed: int = 0) -> bytes:
    """An RGB PNG (8 bits a channel): a colour gradient that differs with `seed`."""
    rows = b"".join(
        b"\0" + bytes(v for x in range(width)
                      for v in ((x * 255 // max(width - 1, 1) + 40 * seed) % 256,
                                (y * 255 // max(height - 1, 1)) % 256, (97 * seed + 64) % 256))
        for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit depth, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def image_content(text: str, count: int) -> list[dict[str, Any]]:
    """A user turn's content: `count` distinct PNGs as data URLs, then the text (OpenAI's chat format)."""
    parts: list[dict[str, Any]] = [
        {"type": "image_url",
         "image_url": {"url": "data:image/png;base64," + base64.b64encode(png(64, 48, seed=i)).decode()}}
        for i in range(count)]
    return [*parts, {"type": "text", "text": text}]


def _check(checks: list[Check], name: str, fn: Any) -> Any:
    """Run one check; any exception is that check's failure, the others still run."""
    try:
        passed, detail, value = fn()
    except Exception as exc:  # a failing check must never abort the others
        passed, detail, value = False, f"{type(exc).__name__}: {exc}"[:300], None
    checks.append(Check(name, passed, detail))
    info(f"  {'[green]✓' if passed else '[red]✗'} {name}[/] {escape(detail)}")
    return value


def run_checks(recipe: Recipe, host: str, port: int, stack_id: str | None) -> tuple[list[Check], float | None]:
    """Talk to a ready engine as users do; returns every check (each runs even if another failed) and the
    time to the first streamed token."""
    import openai

    checks: list[Check] = []

    client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="EMPTY", timeout=120, max_retries=0)
    served = recipe.serve.served_model_name
    messages = [{"role": "user", "content": recipe.tests.smoke.prompt}]
    max_tokens = recipe.tests.smoke.max_tokens
    images, image_limit = recipe.tests.smoke.images, recipe.serve.image_limit()
    text_prompt_tokens: list[int] = []

    def models() -> tuple[bool, str, None]:
        ids = [m.id for m in client.models.list().data]
        return served in ids, f"served models: {ids}", None

    def chat() -> tuple[bool, str, None]:
        # temperature 0: the same image answers the same way, so a failure reproduces
        resp = client.chat.completions.create(model=served, messages=messages, max_tokens=max_tokens,
                                              temperature=0)
        content = resp.choices[0].message.content or ""
        usage = resp.usage
        prompt_t = usage.prompt_tokens if usage else 0
        completion_t = usage.completion_tokens if usage else 0
        ok = bool(content) and prompt_t > 0 and completion_t > 0
        text_prompt_tokens.append(prompt_t)
        return ok, f"{content[:60]!r}; tokens prompt={prompt_t} completion={completion_t}", None

    def image() -> tuple[bool, str, None]:
        sent = time.perf_counter()
        resp = client.chat.completions.create(
            model=served, max_tokens=max_tokens, temperature=0,
            messages=[{"role": "user", "content": image_content(recipe.tests.smoke.prompt, images)}])
        latency = time.perf_counter() - sent
        content = resp.choices[0].message.content or ""
        prompt_t = resp.usage.prompt_tokens if resp.usage else 0
        completion_t = resp.usage.completion_tokens if resp.usage else 0
        # the images became tokens of the prompt: more than the same text alone
        text_t = text_prompt_tokens[0] if text_prompt_tokens else 0
        ok = bool(content) and completion_t > 0 and prompt_t > text_t > 0
        return ok, (f"{images} PNG(s) 64x48: {content[:40]!r}; tokens prompt={prompt_t} (text alone {text_t}) "
                    f"completion={completion_t}; {latency * 1000:.0f} ms"), None

    def over_limit() -> tuple[bool, str, None]:
        assert image_limit is not None
        count = image_limit + 1
        try:
            client.chat.completions.create(
                model=served, max_tokens=1, temperature=0,
                messages=[{"role": "user", "content": image_content(recipe.tests.smoke.prompt, count)}])
        except openai.BadRequestError as exc:
            # refused, and still serving
            alive = served in [m.id for m in client.models.list().data]
            message = str(getattr(exc, "message", exc))[:120]
            state = "still serving" if alive else "engine gone"
            return exc.status_code == 400 and alive, (f"{count} images (limit {image_limit}): {exc.status_code} "
                                                      f"{message!r}; {state}"), None
        return False, f"{count} images (limit {image_limit}) were accepted: the engine does not apply its limit", None

    def stream() -> tuple[bool, str, float | None]:
        sent = time.perf_counter()
        first: float | None = None
        chunks, parts = 0, []
        for chunk in client.chat.completions.create(model=served, messages=messages, max_tokens=max_tokens,
                                                    temperature=0, stream=True):
            chunks += 1
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                if first is None:
                    first = time.perf_counter() - sent
                parts.append(delta)
        content = "".join(parts)
        ttft = f"{first * 1000:.0f} ms" if first is not None else "none"
        return chunks > 0 and bool(content), f"{chunks} chunks, {content[:40]!r}, first token {ttft}", first

    def stamp() -> tuple[bool, str, None]:
        version = requests.get(f"http://{host}:{port}/version", timeout=10).json().get("version", "")
        if not stack_id:
            return False, (f"engine says {version!r}, but the image has no {labels.STACK_ID} label: "
                           "it was not built by FlagRelease from a patch stack"), None
        want = f"+flagos.{stack_id}"
        if version.endswith(want):
            return True, f"engine says {version!r}", None
        return False, f"engine says {version!r}, expected it to end with {want!r} (label {labels.STACK_ID})", None

    _check(checks, "models", models)
    _check(checks, "chat", chat)
    ttft = _check(checks, "stream", stream)
    if images:
        _check(checks, "image", image)
        if image_limit is not None:
            _check(checks, "over-limit", over_limit)
        else:
            info("  - over-limit: the recipe declares no limit_mm_per_prompt image limit, nothing to exceed")
    _check(checks, "stamp", stamp)
    return checks, round(ttft, 4) if ttft is not None else None


# the actor classes vLLM's Ray executors run a worker in (RayExecutorV2, the compiled-graph executor)
VLLM_WORKER_CLASSES = ("RayWorkerProc", "RayWorkerWrapper")


def check_cluster(ask: Callable[[], dict], ips: list[str], per_node: int) -> tuple[Check, dict[str, dict]]:
    """Ray's own view of a multi-node engine: every node alive, each with `per_node` live vLLM workers, and
    no other node. `ask` returns {"nodes": [{ip, alive, cpus}], "actors": [{class, name, state, ip}]}."""
    try:
        facts = ask()
    except Exception as exc:  # the check fails, the smoke goes on
        return Check("cluster", False, f"{type(exc).__name__}: {exc}"[:300]), {}
    by_ip: dict[str, dict] = {ip: {"alive": False, "cpus": 0, "workers": []} for ip in ips}
    strangers = []
    for node in facts.get("nodes", []):
        if node["ip"] in by_ip:
            if node["alive"]:
                by_ip[node["ip"]].update(alive=True, cpus=node["cpus"])
        elif node["alive"]:
            strangers.append(node["ip"])
    for actor in facts.get("actors", []):
        if actor["class"] in VLLM_WORKER_CLASSES and actor["state"] == "ALIVE" and actor["ip"] in by_ip:
            by_ip[actor["ip"]]["workers"].append(actor["name"] or actor["class"])
    passed = not strangers and all(n["alive"] and len(n["workers"]) == per_node for n in by_ip.values())
    detail = "; ".join(f"{ip} {'alive' if n['alive'] else 'NOT ALIVE'}, {len(n['workers'])} vLLM worker(s)"
                       for ip, n in by_ip.items())
    if strangers:
        detail += f"; unexpected nodes {', '.join(strangers)}"
    return Check("cluster", passed, detail), by_ip


def _loopback_or_wildcard(listener: str) -> bool:
    address = ipaddress.ip_address(listener.rsplit(":", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def check_isolation(network: dict) -> Check:
    """Nothing listens outside loopback: the nodes' namespace has no interface but `lo`, so its wildcard
    listeners (Ray binds every interface) are reachable on loopback only, and no listener names another
    address."""
    interfaces, listeners = network["interfaces"], network["listeners"]
    strays = [item for item in listeners if not _loopback_or_wildcard(item)]
    wildcard = [item for item in listeners if ipaddress.ip_address(item.rsplit(":", 1)[0]).is_unspecified]
    passed = interfaces == ["lo"] and not strays
    detail = (f"interfaces {interfaces}; {len(listeners)} TCP listeners, {len(wildcard)} of them on a wildcard "
              f"address (loopback-only here)" + (f"; not loopback: {', '.join(strays)}" if strays else ""))
    return Check("isolation", passed, detail)
