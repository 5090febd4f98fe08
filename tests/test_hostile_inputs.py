"""Hostile values in every recipe field and option: refused where they enter, inert where they land.

Table-driven: each field x each hostile value is written into a copy of tiny-cpu.yaml and loaded the way the
sessions load it. Either the load refuses it with one message naming the field, or every artifact the value
reaches is rendered and checked: the Dockerfile (render), the model card (its Markdown, the docker run line,
the FlagScale serve YAML and the Python example) and the smoke test's docker run line. Values that the
grammar refuses are also pushed past validation (model_copy) into the renderers, which must still keep them
inert (or refuse them themselves).
"""

from __future__ import annotations

import ast
import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from test_card import sample_record
from test_render import fixed_stack

from tools.core.errors import UserError
from tools.core.lock import load_lock
from tools.core.recipe import Recipe, engine_argv, load_recipe, recipe_path
from tools.stages import card, flagscale, smoke
from tools.stages.plan import BuildOptions, make_plan
from tools.stages.render import render_dockerfile

HOSTILE = [
    "x\nRUN echo pwned",
    'x"; __import__("os").system("id") #',
    "$(id)",
    "`id`",
    "a|b",
    "bad ref!!",
    "<script>alert(1)</script>",
    "--privileged",
    "a b",
    "```\n# injected heading",
    "x\r\ny: 1",
    "- [link](javascript:alert(1))",
    "${oc.env:HOME}",
]

# (path, mode): "value" sets the value at the path; "key" adds the hostile text as a key of the mapping there
FIELDS = [
    ("name", "value"), ("model.id", "value"), ("model.path", "value"), ("model.host_path", "value"),
    ("model.source", "value"), ("model.weights_url", "value"), ("model.download", "value"),
    ("serve.served_model_name", "value"), ("serve.port", "value"),
    ("serve.env.HF_HUB_OFFLINE", "value"), ("serve.env", "key"),
    ("serve.engine_args.dtype", "value"), ("serve.engine_args", "key"),
    ("run.mounts", "value"), ("run.env.X", "value"), ("run.env", "key"), ("run.shm_size", "value"),
    ("build.torch_cuda_arch_list", "value"), ("build.flaggems_ops", "value"), ("tests.op_tests.ops", "value"),
    ("tests.smoke.prompt", "value"), ("release.image_name", "value"), ("release.tags", "value"),
    ("card.title", "value"), ("card.intro", "value"), ("card.environment.Accelerator", "value"),
    ("card.environment", "key"), ("card.faq", "value"), ("card.benchmarks", "value"),
]
LISTS = {"run.mounts", "build.flaggems_ops", "tests.op_tests.ops", "release.tags"}
SHELL = "0.0.0.0"


def _set(data: dict, path: str, mode: str, value: str) -> None:
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if mode == "key":
        node.setdefault(last, {})[value] = "v"
    elif path in LISTS:
        node[last] = [value]
    elif path == "card.faq":
        node[last] = [{"q": value, "a": value}]
    elif path == "card.benchmarks":
        node[last] = [{"Metrics": value, value: 1.5}]
    else:
        node[last] = value


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "tiny-cpu.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def clean() -> tuple[dict, Recipe, str, str]:
    data = yaml.safe_load(recipe_path("tiny-cpu").read_text(encoding="utf-8"))
    recipe, path = load_recipe("tiny-cpu")
    return data, recipe, _dockerfile(recipe, path), card.render_card(recipe, sample_record("tiny-cpu"))


def _dockerfile(recipe: Recipe, path: Path) -> str:
    loaded = load_lock()
    return render_dockerfile(make_plan(loaded, recipe, path, fixed_stack(recipe.vendor), BuildOptions()), loaded)


def _fences(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)


def _outside_fences(text: str) -> str:
    return re.sub(r"^```\w*\n.*?^```$", "", text, flags=re.S | re.M)


def _check_card(recipe: Recipe, text: str, baseline: str) -> None:
    fences, base_fences = _fences(text), _fences(baseline)
    if recipe.model.download:  # the card shows the download command in a block of its own
        assert fences[0] == ("bash", recipe.model.download + "\n")
        fences = fences[1:]
    assert [lang for lang, _ in fences] == [lang for lang, _ in base_fences], "a value opened or closed a fence"
    blocks = {lang: body for lang, body in reversed(fences)}  # the first block of each language
    # Python example: parses to the same statements; the model name is one string constant
    tree, base_tree = ast.parse(blocks["python"]), ast.parse(dict(reversed(base_fences))["python"])
    assert [type(n).__name__ for n in tree.body] == [type(n).__name__ for n in base_tree.body]
    assigned = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert isinstance(assigned["model"], ast.Constant) and assigned["model"].value == recipe.serve.served_model_name
    # FlagScale's YAML files: load back to exactly the recipe's values
    documents = [yaml.safe_load(body) for lang, body in fences if lang == "yaml"]
    (item,) = next(d for d in documents if isinstance(d, list))
    entry = {**item["engine_args"], **item.get("engine_args_specific", {}).get("vllm", {})}
    assert entry["served_model_name"] == recipe.serve.served_model_name and entry["model"] == recipe.model.path
    for key, value in recipe.serve.engine_args.items():
        assert entry[key] == value
    envs = next(d for d in documents if isinstance(d, dict))["experiment"]["envs"]
    assert envs == {k: flagscale._env_value(v) for k, v in {**recipe.serve.env, **recipe.run.env}.items()}
    # docker run: every value is one shell word, the engine's argv exactly as the smoke test builds it
    run = [body for lang, body in fences if lang == "bash" and body.startswith("docker run")][0]
    tokens = shlex.split(run.split("\n\ndocker logs")[0].replace("\\\n", " "))
    want = engine_argv(recipe, recipe.model.path, SHELL, recipe.serve.port)
    assert tokens[-len(want):] == want
    for key, value in {**recipe.serve.env, **recipe.run.env}.items():
        assert f"{key}={card._env_value(value)}" in tokens
    for mount in recipe.run.mounts:
        assert mount in tokens
    # Markdown outside the fences: no new heading, HTML or table cell
    prose, base_prose = _outside_fences(text), _outside_fences(baseline)
    headings = [ln for ln in prose.splitlines() if ln.startswith("#")]
    base_headings = [ln for ln in base_prose.splitlines() if ln.startswith("#")]
    added = len(recipe.card.faq) + (2 if recipe.card.benchmarks else 0)  # FAQ entries; benchmark section
    assert len(headings) == len(base_headings) + added
    # raw HTML outside code spans (inside one it is shown as text)
    assert not re.search(r"(?<!\\)<script", re.sub(r"(`+).*?\1", "", prose)), "raw HTML reached the card"
    assert "\n```" not in prose
    for line in prose.splitlines():
        if line.startswith("| ") and "---" not in line:
            assert len(re.findall(r"(?<!\\)\|", line)) in {3, 4}, line  # 2 (or 3 with benchmarks) columns


def _check_smoke_line(recipe: Recipe) -> None:
    spec = smoke.run_spec(recipe, Path("/host/model"), 9010)
    line = shlex.join(spec.command_line("flagrelease-local/tiny-cpu:latest"))
    tokens = shlex.split(line)
    assert tokens == spec.command_line("flagrelease-local/tiny-cpu:latest")
    assert tokens[-len(spec.argv):] == spec.argv


def _check_all(recipe: Recipe, path: Path, baseline_dockerfile: str, baseline_card: str) -> None:
    assert _dockerfile(recipe, path) == baseline_dockerfile, "a recipe value changed the Dockerfile"
    try:
        text = card.render_card(recipe, sample_record("tiny-cpu"))
    except UserError as err:  # the card refuses a value that would break out of a code block
        assert "code block" in err.what
        return
    _check_card(recipe, text, baseline_card)
    _check_smoke_line(recipe)


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize(("field", "mode"), FIELDS, ids=[f"{f}:{m}" for f, m in FIELDS])
def test_hostile_value_is_refused_or_inert(tmp_path, clean, field, mode, value):
    data, _, baseline_dockerfile, baseline_card = clean
    data = copy.deepcopy(data)
    _set(data, field, mode, value)
    path = _write(tmp_path, data)
    try:
        recipe, _ = load_recipe(str(path))
    except UserError as err:
        text = err.render()
        assert "Traceback" not in text
        head = field.split(".")[0]
        # one message that names the field (or the file's name check, for `name`)
        assert head in (err.where or "") or "file name" in err.what, text
        return
    _check_all(recipe, path, baseline_dockerfile, baseline_card)


def _bypass(model: Any, parts: list[str], value: Any) -> Any:
    head, rest = parts[0], parts[1:]
    current = getattr(model, head) if isinstance(model, BaseModel) else model.get(head)
    new = value if not rest else _bypass(current, rest, value)
    if isinstance(model, BaseModel):
        return model.model_copy(update={head: new})
    return {**model, head: new}


# fields whose values are rendered as text; pushed past validation they must still be inert
RENDERED = ["serve.served_model_name", "model.path", "model.id", "model.host_path", "model.download",
            "serve.env.HF_HUB_OFFLINE", "serve.engine_args.dtype", "card.title", "card.intro"]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("field", RENDERED)
def test_renderers_keep_unvalidated_values_inert(clean, field, value):
    _, recipe, baseline_dockerfile, baseline_card = clean
    hostile = _bypass(recipe, field.split("."), value)
    _check_all(hostile, recipe_path("tiny-cpu"), baseline_dockerfile, baseline_card)


def test_dockerfile_refuses_a_multi_line_value():
    recipe, path = load_recipe("tiny-cpu")
    hostile = recipe.model_copy(update={"name": "x\nRUN echo pwned"})
    with pytest.raises(UserError, match="spans lines"):
        _dockerfile(hostile, path)


@pytest.mark.parametrize("value", HOSTILE + ["team/UPPER:1", "x@sha256:abc", "x:" + "t" * 129, ""])
def test_base_image_is_parsed_as_an_image_reference(value):
    with pytest.raises(UserError) as err:
        BuildOptions(base_image=value)
    assert err.value.where == "--base-image" and "is not an image reference" in err.value.what
    assert "[REGISTRY[:PORT]/]PATH[:TAG][@sha256:DIGEST]" in (err.value.fix or "")


@pytest.mark.parametrize("value", [
    "debian", "local/stand-in:1", "localhost:5000/a/b:c", "registry.example.com:5000/team/base:1.0",
    "nvidia/cuda:13.0.3-devel-ubuntu24.04@sha256:" + "a" * 64, "a__b/c-d.e:T_1", "Host.Example/x",
])
def test_good_references_pass(value):
    assert BuildOptions(base_image=value).base_image == value


@pytest.mark.parametrize("url", ["https://mirror.example/simple\n[global]", "ftp://x/simple", "https://a b/simple"])
def test_index_urls_are_one_http_line(url):
    with pytest.raises(UserError, match="not an http"):
        BuildOptions(index_url=url)
