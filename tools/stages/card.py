"""Model card (README.md) from recipe + release record, in the shape of the FlagRelease release notes.

The template is tools/templates/model_card.md.j2 (StrictUndefined: a missing value is an error, not an
empty string). Every value is made inert where it lands: Markdown-escaped in prose and tables, a code span
in backticks, shell-quoted in commands, a JSON (= Python) string literal in the Python example,
yaml.safe_dump in YAML. Commands in the card are built here from the same data the smoke test uses: the
vendor run profile (tools/core/profiles.py) and the recipe's engine arguments (tools/core/recipe.engine_argv).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2

from tools.core import vendors
from tools.core.errors import UserError
from tools.core.profiles import docker_run_flags
from tools.core.recipe import Recipe, engine_argv
from tools.stages import flagscale
from tools.stages.plan import site_packages
from tools.stages.record import ReleaseRecord

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
CONTAINER = flagscale.CONTAINER
# where the card's docker run mounts the site's hostfile for a release that spans machines
SITE_HOSTFILE = "/etc/flagos/hostfile.txt"
SERVE_HOST = "0.0.0.0"  # the card serves for other machines (the API example calls <server_ip>)
_VALUE_FLAGS = {"--gpus", "--ulimit", "--device", "-v", "-e", "--name", "--entrypoint"}


def _env_value(value: object) -> str:
    # vLLM reads boolean variables with int(): YAML true/false must become 1/0 (as the smoke test does)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _pairs(tokens: list[str]) -> list[list[str]]:
    """Group `--flag value` pairs so each lands on its own line of the shown command."""
    groups: list[list[str]] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in _VALUE_FLAGS and i + 1 < len(tokens):
            groups.append(tokens[i:i + 2])
            i += 2
        else:
            groups.append([tokens[i]])
            i += 1
    return groups


def run_flags(recipe: Recipe) -> list[str]:
    """The vendor profile's docker run flags, without devices enumerated on this (build) host."""
    return docker_run_flags(recipe.vendor, shm_size=recipe.run.shm_size, enumerate_devices=False)


def _device_loops(vendor: str) -> list[str]:
    """Devices the user's host enumerates (NPUs), as shell loops over the vendor's globs."""
    return [f"""$(for d in {pattern}; do printf -- '--device %s ' "$d"; done)"""
            for pattern in vendors.get(vendor).device_globs]


def docker_run_command(recipe: Recipe, image_ref: str) -> str:
    model_mount = f":{recipe.model.path}:ro"
    mounts = [f"{recipe.model.host_path}{model_mount}"] if recipe.model.host_path else []
    mounts += list(recipe.run.mounts)
    flags = run_flags(recipe)
    env = {k: _env_value(v) for k, v in {**recipe.serve.env, **recipe.run.env}.items()}
    # the profile already sets some (Ascend: PYTORCH_NPU_ALLOC_CONF); say each KEY=VALUE once
    env = {k: v for k, v in env.items() if f"{k}={v}" not in flags}
    head = ["docker", "run", "--detach", "--name", CONTAINER, "--net=host"]
    groups = _pairs(flags)
    lines = [" ".join(map(shlex.quote, group)) for group in groups]
    # enumerated devices first, as tools.core.profiles orders them: before the profile's fixed devices
    first = next((i for i, g in enumerate(groups) if g[0] == "--device"), len(groups))
    lines[first:first] = _device_loops(recipe.vendor)
    # the tiny model's folder is a shell variable the user sets: it must expand, the rest is quoted
    if not recipe.model.host_path and recipe.model.source.startswith("tiny"):
        lines.append(f'-v "$TINY_MODEL_DIR"{shlex.quote(model_mount)}')
    lines += [f"-v {shlex.quote(m)}" for m in mounts]
    lines += [f"-e {shlex.quote(f'{k}={v}')}" for k, v in env.items()]
    if recipe.serve.launcher == "flagscale":
        # FlagScale starts the engine inside a running container (`docker exec ... flagscale serve`); its
        # nohup'd engine and Ray processes end up children of PID 1, which `sleep` would never reap
        head.insert(3, "--init")
        if recipe.serve.nnodes > 1 and not recipe.serve.hosts:
            lines.append(f"-v /etc/flagos/hostfile.txt:{SITE_HOSTFILE}:ro")
            lines.append(f"-e {flagscale.ENV_HOSTFILE}={SITE_HOSTFILE}")
        lines += ["--entrypoint sleep", shlex.quote(image_ref), "infinity"]
        return " \\\n  ".join([" ".join(head), *lines])
    lines.append(shlex.quote(image_ref))
    argv = engine_argv(recipe, recipe.model.path, SERVE_HOST, recipe.serve.port)
    lines += [" ".join(map(shlex.quote, group)) for group in _arg_groups(argv)]
    return " \\\n  ".join([" ".join(head), *lines])


def flagscale_command(recipe: Recipe) -> str:
    """What starts the engine on the head node (vendors whose environment a script sets get it first)."""
    entry = list(vendors.get(recipe.vendor).entrypoint_sources and ["/opt/flagrelease/entrypoint.sh"])
    return shlex.join(["docker", "exec", CONTAINER, *entry, "flagscale", "serve", flagscale.example_name(recipe)])


def _arg_groups(argv: list[str]) -> list[list[str]]:
    groups: list[list[str]] = []
    for token in argv:
        if token.startswith("--") or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


class Safe(str):
    """Text already made inert for the place it lands in the card (quoted, escaped, or generated here)."""


# inline Markdown that recipe text could open: emphasis, code, links, images, HTML, tables, strike-through
_MD_INLINE = re.compile(r"[\\`*\[\]<>|!~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# block markers at a line's start: '>' always; '#', '+', '-', '=' before a space, the end or themselves (headings,
# lists, rules); digits before '.' or ')' and a space (ordered lists)
_MD_BLOCK_START = re.compile(r"^(\s*)(>|([#+=-])(?=\s|$|\3)|\d{1,9}(?=[.)](?:\s|$)))")


def md(value: object, *, cell: bool = False) -> Safe:
    """Plain text as Markdown that renders as exactly that text: one line, specials backslash-escaped (and,
    outside table cells, where nothing can open a block, a leading block marker too)."""
    if isinstance(value, Safe):
        return value
    if isinstance(value, bool) or value is None:
        return Safe(str(value))
    if isinstance(value, int | float):
        return Safe(str(value))
    text = " ".join(str(value).splitlines())
    text = _MD_INLINE.sub(lambda m: "\\" + m.group(), text.replace("&", "&amp;"))
    if cell:
        return Safe(text)
    # a line opening with a heading, quote, list or rule marker would start a block
    text = _MD_BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2) if not m.group(2)[0].isdigit()
                               else m.group(1) + m.group(2) + "\\", text, count=1)
    return Safe(text)


def code(value: object) -> Safe:
    """An inline code span holding exactly `value` (a fence longer than any backtick run inside it)."""
    # one line; a '|' would split a table cell even inside a code span (GFM), so it is escaped
    text = " ".join(str(value).splitlines()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or longest else ""
    return Safe(f"{fence}{pad}{text}{pad}{fence}")


def block(value: object) -> Safe:
    """A line inside a fenced code block: it must not be able to close the fence."""
    text = str(value)
    if "```" in text or "~~~" in text:
        raise UserError(f"a value would close a code block of the model card: {text[:80]!r}",
                        where="model card", fix="remove the backticks/tildes from the recipe value")
    return Safe(text)


def py(value: object) -> Safe:
    """A Python string literal (JSON's escaping is valid Python): the value can never become code."""
    return Safe(json.dumps(str(value)))


def _row(cells: list[object]) -> Safe:
    return Safe("| " + " | ".join(md(c, cell=True) for c in cells) + " |")


def table_lines(header: list[object], rows: list[list[object]]) -> list[Safe]:
    return [_row(header), Safe("| " + " | ".join("---" for _ in header) + " |"), *(_row(r) for r in rows)]


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    return header, [[str(row.get(h, "")) for h in header] for row in rows]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("h") else "s")


def environment_rows(recipe: Recipe, record: ReleaseRecord) -> list[tuple[object, object]]:
    v = record.versions
    rows: list[tuple[object, object]] = list(recipe.card.environment.items())
    rows += [
        ("vLLM", f"Version: {v.vllm} (commit {v.vllm_commit[:12]})"),
        ("FlagOS patch stack", f"{record.patch_stack.stack_id} ({_count(len(record.patch_stack.files), 'patch')})"),
        ("FlagGems", f"Version: {v.flaggems}"),
        *([("FlagScale", f"Version: {v.flagscale}")] if v.flagscale else []),
        ("PyTorch", f"Version: {v.torch}"),
        ("Python", f"Version: {v.python}"),
        ("Image digest", code(record.digest) if record.digest else "(not pushed)"),
    ]
    return rows


def flagscale_log(recipe: Recipe) -> str:
    """The engine's output under `flagscale serve` (FLAGOS_EXP_DIR's default, the head's first script)."""
    return f"/tmp/flagscale/{flagscale.exp_name(recipe)}/serve_logs/host_0_localhost.output"


def log_command(recipe: Recipe) -> str:
    """Where the engine's log is read: the container's output, or FlagScale's log file on the head."""
    if recipe.serve.launcher == "flagscale":
        return f"docker exec {CONTAINER} tail -n 100 {flagscale_log(recipe)}"
    return f"docker logs {CONTAINER}"


def faq(recipe: Recipe) -> list[tuple[Safe, list[Safe]]]:
    """The card's FAQ, answered with this release's own names (its port, its container, its log), then the
    recipe's own questions. Every name is a code span, the recipe's own text escaped Markdown."""
    serve, port = recipe.serve, recipe.serve.port
    multi = serve.nnodes > 1
    where = recipe.model.host_path or ("$TINY_MODEL_DIR" if recipe.model.source.startswith("tiny") else None)
    on_host = f"{code(where)} on the host{' of every machine' if multi else ''}" if where else "the host folder"
    running = (code(f'docker exec {CONTAINER} pgrep -af "vllm serve"') if serve.launcher == "flagscale"
               else code(f"docker ps --filter name={CONTAINER}"))
    items: list[tuple[str, list[str]]] = [
        ("What should I do if the model fails to load?", [
            f"Check that the weights of {code(recipe.model.id)} are in {on_host}, mounted at "
            f"{code(recipe.model.path)} in the container {code(CONTAINER)}.",
            f"Read the engine log{' on the head machine' if multi else ''}: {code(log_command(recipe))}.",
        ]),
        ("API call returns a timeout error. What should I do?", [
            f"Verify the server IP address{' (the head machine)' if multi else ''} and that port {port} is open "
            "in the firewall.",
            f"Confirm that the engine is running: {running}, then {code(f'curl http://<server_ip>:{port}/v1/models')} "
            f"lists {code(serve.served_model_name)}.",
        ]),
    ]
    if multi:
        items.append(("A worker machine never joins. What should I do?", [
            f"The head's container must reach every worker over passwordless ssh on port "
            f"${flagscale.ENV_SSH_PORT} (default 22), and each worker's container must be named "
            f"{code(CONTAINER)} (or as ${flagscale.ENV_CONTAINER} says).",
            f"{code(f'docker exec {CONTAINER} ray status')} on the head lists the machines that joined "
            f"({serve.nnodes} are needed).",
        ]))
    limit = serve.image_limit()
    if limit is not None:
        items.append(("How many images can one request carry?", [
            f"Up to {limit} (`limit_mm_per_prompt`); a request with more gets HTTP 400 from the engine, which "
            "goes on serving. Send images as `image_url` parts of a user message (URLs or `data:` URLs).",
        ]))
    ours = [(Safe(q), [Safe(a) for a in answers]) for q, answers in items]  # our text, names already code spans
    return ours + [(md(item.get("q", "")), [md(item.get("a", ""))]) for item in recipe.card.faq]


def context(recipe: Recipe, record: ReleaseRecord) -> dict[str, Any]:
    fs = flagscale.serve_config(recipe, site_packages(record.versions.python))
    bench_header, bench_rows = _table(list(recipe.card.benchmarks))
    environment = [[name, value] for name, value in environment_rows(recipe, record)]
    return {
        "bench_lines": table_lines(list(bench_header), list(bench_rows)) if bench_rows else [],
        "environment_lines": table_lines(["System Component", "Version Information"], environment),
        "title": recipe.card.title,
        "vendor": vendors.get(recipe.vendor).display_name,
        "vendor_key": recipe.vendor,
        "intro": recipe.card.intro.strip(),
        "bench_rows": bench_rows,
        "model_id": recipe.model.id,
        "model_path": recipe.model.path,
        "model_host_path": recipe.model.host_path,
        "model_source": recipe.model.source,
        "weights_url": recipe.model.weights_url,
        "download": recipe.model.download,
        "pull_ref": record.pull_ref,
        "immutable_ref": record.immutable_ref,
        "digest_ref": record.digest_ref if record.digest else None,
        "docker_run": block(docker_run_command(recipe, record.pull_ref)),
        "launcher": recipe.serve.launcher,
        "nnodes": recipe.serve.nnodes,
        "nproc_per_node": recipe.serve.nproc_per_node,
        "device_type": recipe.serve.device_type,
        "flagscale_command": block(flagscale_command(recipe)),
        "flagscale_example": fs.example,
        "flagscale_conf": fs.conf_path(site_packages(record.versions.python)),
        "flagscale_files": sorted((rel.split("/conf/", 1)[1], block(text.rstrip("\n")))
                                  for rel, text in fs.files.items()),
        "flagscale_log": flagscale_log(recipe),
        "log_command": log_command(recipe),
        "tiny_vl_command": code("python -c \"from tools.stages.tinyvl import make_tiny_vl_model; "
                                f"print(make_tiny_vl_model({record.pull_ref!r}).path)\""),
        "site_hostfile": SITE_HOSTFILE,
        "env_hostfile": flagscale.ENV_HOSTFILE,
        "env_container": flagscale.ENV_CONTAINER,
        "env_ssh_port": flagscale.ENV_SSH_PORT,
        "served_model_name": recipe.serve.served_model_name,
        "port": recipe.serve.port,
        "image_limit": recipe.serve.image_limit(),
        "container": CONTAINER,
        "faq": faq(recipe),
        "record": record,
        "smoke": record.tests.get("smoke"),
        "op_tests": record.tests.get("op-tests"),
        "op_tests_waiver": next((w for w in record.waivers if w.kind == "op-tests"), None),
    }


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown, not HTML: `md` below escapes, the filters quote for code and Python
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=md,  # every {{ value }} is escaped Markdown unless a filter made it Safe for its place
    )
    env.filters.update(code=code, block=block, py=py)
    return env


def render_card(recipe: Recipe, record: ReleaseRecord) -> str:
    return environment().get_template("model_card.md.j2").render(**context(recipe, record))
