"""Each release's generated card against its release note (../shared/release-notes/), fact by fact.

The facts users copy from a note are read from the note and from the card we generate, the same way:
weights and where they go, served model name, port, the serve YAML's engine arguments (parallel sizes
included), node count, environment switches, docker run flags, image tag, container command, the serve
command, benchmark and environment tables and the FAQ's port, log command, status check and weights folder.
Every difference must be a row of the table in docs/release-notes.md (note, fact, what it says, what we
generate, why), and every row must still be a difference, so a stale row fails too.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml
from test_card import sample_record

from tools import PROJECT_ROOT
from tools.core.recipe import load_recipe
from tools.stages import card

NOTES = PROJECT_ROOT.parent / "shared" / "release-notes"
DOC = PROJECT_ROOT / "docs" / "release-notes.md"
# note file stem == recipe name
RELEASES = ("ernie-4.5-300b-a47b-nvidia", "kimi-k2-instruct-nvidia", "qwen2.5-vl-32b-instruct-nvidia",
            "robobrain2-32b-ascend", "robobrain2-7b-fp8dynamic-nvidia")
ABSENT = "(not set)"
KINDS = ("env ", "docker run ", "benchmark ", "serve YAML: ", "FAQ ")  # compared both ways
needs_notes = pytest.mark.skipif(not NOTES.is_dir(), reason=f"the release notes are not here ({NOTES})")

# docker run: flags that take a value, and the long names of the short ones
_VALUE_FLAGS = {"--name", "-v", "--volume", "-e", "--env", "--ulimit", "--shm-size", "--gpus", "--device",
                "--entrypoint", "-u", "--user", "-w", "--workdir", "--network", "--net", "--security-opt", "--ipc",
                "--uts", "--label"}
_LONG = {"-d": "--detach", "-i": "--interactive", "-t": "--tty", "-u": "--user", "-w": "--workdir",
         "-v": "--volume", "-e": "--env", "--net": "--network"}


def blocks(text: str) -> list[str]:
    """The fenced code blocks' contents (without the language word)."""
    return [b.split("\n", 1)[1] if "\n" in b else "" for b in text.split("```")[1::2]]


def scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def env_scalar(value: Any) -> str:
    # FlagScale exports YAML booleans as True/False, the notes' -e write true; vLLM reads 1/0: all the same switch
    text = scalar(value)
    return {"true": "1", "false": "0"}.get(text.lower(), text)


def _command(text: str, start: str) -> str | None:
    """The first shell command starting with `start`, with its backslash continuations joined."""
    for block in blocks(text):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith(start):
                parts = [line.strip()]
                while parts[-1].endswith("\\") and i + 1 < len(lines):
                    i += 1
                    parts[-1] = parts[-1][:-1]
                    parts.append(lines[i].strip())
                return " ".join(parts)
    return None


def docker_run(text: str) -> dict[str, Any]:
    command = _command(text, "docker run")
    assert command, "no docker run command"
    # the card enumerates NPUs with a shell loop; one token stands for it
    command = re.sub(r"\$\(for d in .*?; done\)", "NPU-DEVICE-LOOP", command)
    tokens = shlex.split(command)[2:]
    flags: set[str] = set()
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    i = 0
    while i < len(tokens) and (tokens[i].startswith("-") or tokens[i] == "NPU-DEVICE-LOOP"):
        token = tokens[i]
        if token == "NPU-DEVICE-LOOP":
            flags.add("--device <every /dev/davinci[0-9]* of the host>")
            i += 1
            continue
        name, _, value = token.partition("=")
        if re.fullmatch(r"-[a-z]{2,}", name):  # -itd
            flags |= {_LONG.get(f"-{c}", f"-{c}") for c in name[1:]}
            i += 1
            continue
        name = _LONG.get(name, name)
        if not _ and name in {_LONG.get(f, f) for f in _VALUE_FLAGS}:
            value = tokens[i + 1]
            i += 1
        i += 1
        if name == "--env":
            key, _, val = value.partition("=")
            env[key] = env_scalar(val)
        elif name == "--entrypoint":
            entrypoint = [value]
        else:
            flags.add(f"{name} {value}".strip())
    image, command_args = tokens[i], tokens[i + 1:]
    return {"flags": flags, "env": env, "image": image, "command": " ".join(entrypoint + command_args)}


def tag_of(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else last


def _yaml_blocks(text: str) -> list[Any]:
    found = []
    for block in blocks(text):
        lines = block.splitlines()
        if lines and lines[0].startswith("vim "):
            lines = lines[1:]
        try:
            found.append(yaml.safe_load("\n".join(lines)))
        except yaml.YAMLError:
            continue
    return found


def serve_items(text: str) -> dict[str, Any]:
    """The engine arguments of the last serve/<size>.yaml in the text (engine_args win, as in FlagScale)."""
    items = [d for d in _yaml_blocks(text) if isinstance(d, list) and d and isinstance(d[0], dict)
             and "engine_args" in d[0]]
    if not items:
        return {}
    item = items[-1][0]
    return {**(item.get("engine_args_specific") or {}).get("vllm", {}), **item["engine_args"]}


def serve_top(text: str) -> dict[str, Any]:
    tops = [d for d in _yaml_blocks(text) if isinstance(d, dict) and "experiment" in d]
    return tops[-1] if tops else {}


def facts(text: str) -> dict[str, str]:
    """fact -> value, the same reading for a note and a card."""
    out: dict[str, str] = {}
    if m := re.search(r"\*\*([^*\n]+)\*\* model is adapted", text) or re.search(r"^([A-Za-z0-9][^\s]+)\s+provides",
                                                                                  text, re.M):
        out["title"] = m.group(1)
    if m := re.search(r"modelscope download --model (\S+)\s+--local_dir (\S+)", text):
        out["weights"] = f"{m.group(1)} -> {m.group(2)}"
    engine = serve_items(text)
    # the 7B note says its edits in words: set the 【tensor_parallel_size】 to 4
    words = {"model path": "model", "served-model-name": "served_model_name"}
    for key, value in re.findall(r"set the 【([^】]+)】 to (\S+)", text):
        engine[words.get(key, key)] = value
    for key, value in engine.items():
        out[f"serve YAML: {key}"] = scalar(value)
    if m := re.search(r'^model = "([^"]+)"', text, re.M):
        out["served model name"] = m.group(1)
    elif "served_model_name" in engine:
        out["served model name"] = scalar(engine["served_model_name"])
    if m := re.search(r"base_url = \"http://<server_ip>:(\d+)/v1/\"", text):
        out["port"] = m.group(1)
    elif "port" in engine:
        out["port"] = scalar(engine["port"])
    hostfile = [line for b in blocks(text) for line in b.splitlines()
                if re.match(r"^\s*(x\.x\.x\.x|<\w+_ip>|[0-9.]+)\s+slots=", line)]
    runner = serve_top(text).get("experiment", {}).get("runner", {})
    out["nodes"] = str(len(hostfile) or runner.get("nnodes") or 1)
    run = docker_run(text)
    envs = dict(run["env"])
    for key, value in (serve_top(text).get("experiment", {}).get("envs") or {}).items():
        envs[key] = env_scalar(value)
    # the Kimi note's edits: a block `USE_FLAGGEMS: false`, then `to`, then `USE_FLAGGEMS: true` (the last wins)
    for data in _yaml_blocks(text):
        if isinstance(data, dict) and len(data) == 1 and re.fullmatch(r"[A-Z][A-Z0-9_]+", next(iter(data))):
            key, value = next(iter(data.items()))
            envs[key] = env_scalar(value)
    for key, value in envs.items():
        out[f"env {key}"] = value
    for flag in run["flags"]:
        name, _, value = flag.partition(" ")
        if name in {"--volume", "--ulimit", "--device"}:  # may repeat: each one is a fact of its own
            out[f"docker run {flag}"] = "on"
        else:
            out[f"docker run {name}"] = value or "on"
    out["docker run image tag"] = tag_of(run["image"])
    out["container command"] = run["command"] if run["command"].startswith(("sleep", "bash")) else "the engine"
    if m := re.search(r"^docker pull (\S+)", text, re.M):
        out["image tag"] = tag_of(m.group(1))
    if m := re.search(r"flagscale serve (\w+)", text):
        out["serve command"] = f"flagscale serve {m.group(1)}"
    out.update(benchmark(text))
    out.update(faq_facts(text))
    out.update(environment(text))
    return out


def environment(text: str) -> dict[str, str]:
    """The Environment Setup table (a row's 'Description:' prefix dropped)."""
    if "**Environment Setup**" not in text:
        return {}
    section = text.split("**Environment Setup**", 1)[1].lstrip().split("\n\n", 1)[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and not set(cells[0]) <= set("-: ") and cells[0] != "System Component":
            out[f"environment {cells[0]}"] = re.sub(r"^Description:\s*", "", cells[1])
    return out


def benchmark(text: str) -> dict[str, str]:
    if "## Benchmark Result" not in text:
        return {}
    section = text.split("## Benchmark Result", 1)[1].split("\n#", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.strip().startswith("|")]
    header, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
    out = {"benchmark columns": " | ".join(header)}
    for row in body:
        out[f"benchmark {row[0]}"] = " | ".join(_number(c) for c in row[1:])
    return out


def _number(cell: str) -> str:
    try:
        return scalar(float(cell))
    except ValueError:
        return cell


def faq_facts(text: str) -> dict[str, str]:
    if "# Frequently Asked Questions" not in text:
        return {}
    section = text.split("# Frequently Asked Questions", 1)[1].split("\n# ", 1)[0]
    out = {}
    if ports := sorted(set(re.findall(r"port (\d+)", section))):
        out["FAQ port"] = ", ".join(ports)
    if logs := re.findall(r"`(docker (?:logs|exec \S+ tail)[^`]*)`", section):
        out["FAQ log command"] = logs[0]
    if m := re.search(r"`(docker (?:exec \S+ (?:ps|pgrep)|ps)[^`]*)`", section):
        out["FAQ running check"] = m.group(1)
    if m := re.search(r"present in the `([^`]+)` directory|mounted at `([^`]+)`", section):
        out["FAQ weights folder"] = m.group(1) or m.group(2)
    return out


def documented() -> list[dict[str, str]]:
    """The rows of docs/release-notes.md's table of differences."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        # a `|` inside a cell must be written \|: a row that splits otherwise would silently vanish
        assert len(cells) == 5, f"docs/release-notes.md: not 5 cells: {line}"
        if cells[0] != "note" and not set(cells[0]) <= set("-: "):
            note, fact, says, ours, why = (c.replace("`", "").replace("\\|", "|") for c in cells)
            rows.append({"note": note, "fact": fact, "says": says, "ours": ours, "why": why})
    return rows


def differences(name: str) -> list[tuple[str, str, str]]:
    note = facts((NOTES / f"{name}.md").read_text(encoding="utf-8"))
    recipe, _ = load_recipe(name)
    ours = facts(card.render_card(recipe, sample_record(name)))
    diffs = []
    for fact in sorted(set(note) | set(ours)):
        # a fact only the card has counts when the note speaks of that kind of fact at all (a note with no
        # FAQ or no serve YAML is silent, not different)
        kind = next((k for k in KINDS if fact.startswith(k)), fact)  # others: only what the note says
        # every note has a docker run: what it passes (flags, -e switches) and what it does not, count
        if fact not in note and kind not in ("env ", "docker run ") and not any(f.startswith(kind) for f in note):
            continue
        says, gen = note.get(fact, ABSENT), ours.get(fact, ABSENT)
        if says != gen:
            diffs.append((fact, says, gen))
    return diffs


@needs_notes
@pytest.mark.parametrize("name", RELEASES)
def test_every_difference_from_the_note_is_listed(name):
    listed = {(r["fact"], r["says"], r["ours"]) for r in documented() if r["note"] == name}
    missing = [d for d in differences(name) if d not in listed]
    rows = "\n".join(f"| {name} | {f} | `{s}` | `{o}` | ... |" for f, s, o in missing)
    assert not missing, f"differences from {name}.md that docs/release-notes.md does not list:\n{rows}"


@needs_notes
def test_every_listed_difference_is_real_and_explained():
    actual = {name: set(differences(name)) for name in RELEASES}
    stale = [r for r in documented() if (r["fact"], r["says"], r["ours"]) not in actual.get(r["note"], set())]
    assert not stale, "rows of docs/release-notes.md that are not (or no longer) a difference:\n" + "\n".join(
        f"{r['note']}: {r['fact']}: {r['says']!r} vs {r['ours']!r}" for r in stale)
    assert all(len(r["why"]) > 10 for r in documented())


@needs_notes
@pytest.mark.parametrize("name", RELEASES)
def test_the_facts_every_note_states_are_read(name):
    """The reader finds what each note says (so a silent parse failure cannot pass as 'no difference')."""
    note = facts((NOTES / f"{name}.md").read_text(encoding="utf-8"))
    for fact in ("weights", "served model name", "port", "nodes", "image tag", "docker run image tag",
                 "container command", "serve command", "title"):
        assert fact in note, fact
    assert any(f.startswith("benchmark ") for f in note)
    assert any(f.startswith("serve YAML: tensor_parallel_size") for f in note) or name == "kimi-k2-instruct-nvidia"


def test_reader_on_a_small_note():
    text = ("**X-FlagOS** model is adapted\n```bash\ndocker pull reg.example/a/b:tag_1\n```\n"
            "```\ndocker run -itd --name flagos \\\n  -v /d:/d -e USE_FLAGGEMS=true --net=host \\\n"
            "  reg.example/a/b:tag_2 bash\n```\n"
            '```\nmodel = "m"\nopenai.base_url = "http://<server_ip>:9010/v1/"\n```\n'
            "# Frequently Asked Questions\n- ensure port 9010 is open; `docker logs flagos`.\n")
    got = facts(text)
    assert got["title"] == "X-FlagOS" and got["image tag"] == "tag_1" and got["docker run image tag"] == "tag_2"
    assert got["env USE_FLAGGEMS"] == "1" and got["docker run --volume /d:/d"] == "on"
    assert {got[k] for k in ("docker run --detach", "docker run --interactive", "docker run --tty")} == {"on"}
    assert got["docker run --network"] == "host" and got["docker run --name"] == "flagos"
    assert got["container command"] == "bash" and got["port"] == "9010" and got["served model name"] == "m"
    assert got["FAQ port"] == "9010" and got["FAQ log command"] == "docker logs flagos"
