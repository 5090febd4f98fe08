"""The smoke checks: what a user's OpenAI client sees from a ready engine, each check on its own."""

from __future__ import annotations

import time
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
        return ok, f"{content[:60]!r}; tokens prompt={prompt_t} completion={completion_t}", None

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
    _check(checks, "stamp", stamp)
    return checks, round(ttft, 4) if ttft is not None else None
