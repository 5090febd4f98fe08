"""Recipes: one YAML per release (model x vendor). Validated on load; a bad one gets one clear message."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tools.core import paths, vendors
from tools.core.errors import UserError
from tools.core.lock import Platform
from tools.core.validation import grammar, to_user_error
from tools.core.yamlfile import load_yaml

# Every value that reaches a Dockerfile, a command line, a generated script or a card has a grammar here;
# where it lands it is also quoted for that place (shell, Python, YAML, Markdown: tools/stages/card.py).
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
NAME_RULE = "a name (lower-case letters, digits, . _ -; at most 64)"
Name = grammar(NAME_PATTERN, NAME_RULE)
TagName = grammar(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "a docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})")
# what clients send as "model": Hugging Face style ids, plain names and paths (vLLM's default name)
_COMPONENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
ServedName = grammar(rf"/?{_COMPONENT}(/{_COMPONENT}){{0,15}}",
                     "a model name: components of letters, digits and . _ - joined by / (a path such as "
                     "/models/NAME, vLLM's default, included)")
ModelId = grammar(rf"{_COMPONENT}(/{_COMPONENT})?", "a model id (letters, digits, . _ -, at most one /)")
# absolute paths without ':' (a docker -v separator), spaces, quotes or shell characters
_PATH = r"/[A-Za-z0-9._/+@-]*"
AbsPath = grammar(_PATH, "an absolute path of letters, digits and . _ / + @ - (no spaces, quotes or ':')")
Mount = grammar(f"{_PATH}:{_PATH}(:ro|:rw)?", "HOST_PATH:CONTAINER_PATH[:ro|:rw] with absolute paths of letters, "
                                              "digits and . _ / + @ -")
EnvKey = grammar(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
# one line, no control characters, no backticks and no '${' (values land in argv, shell lines, Markdown
# fences and FlagScale's YAML, where OmegaConf would resolve ${...})
_TEXT = r"(?:[^\x00-\x1f\x7f`$]|\$(?!\{))"
Line = grammar(rf"{_TEXT}*", "one line of text without control characters, backticks or '${'")
# an engine argument's value must not read as another flag
ArgValue = grammar(rf"(?:(?!-){_TEXT}{_TEXT}*)?",
                   "one line without control characters, backticks or '${' that does not start with '-'")
# card prose: one line of text (escaped as Markdown where it lands)
Prose = grammar(r"[^\x00-\x1f\x7f]*", "one line of text without control characters", max_length=8192)
HttpsUrl = grammar(r"https://[A-Za-z0-9._~:/?#@!$&*+,;=%-]+", "an https:// URL without spaces, quotes or brackets")
OpName = grammar(r"[a-z][a-z0-9_]{0,63}", "an operator name ([a-z][a-z0-9_]*)")
Title = grammar(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,127}", "a title (letters, digits, spaces and . _ ( ) + -)")
Source = grammar(r"[a-z][a-z0-9_-]{0,31}", "'tiny', 'tiny-vl' or a hub name such as modelscope")
EnvValue = Line | int | float | bool
JsonScalar = Line | int | float | bool
MappingKey = grammar(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", "a mapping key (letters, digits and _ . -)")
# A mapping value, for the vLLM options that take JSON (e.g. limit_mm_per_prompt: {image: 18})
EngineMapping = dict[MappingKey, JsonScalar | dict[MappingKey, JsonScalar]]
# Engine arguments: FlagScale serve YAML keys (snake_case) mapped 1:1 to vLLM CLI flags.
ArgKey = grammar(r"[a-z][a-z0-9_]*", "a snake_case engine argument ([a-z][a-z0-9_]*)")
EngineArgs = dict[ArgKey, ArgValue | int | float | bool | list[ArgValue] | EngineMapping]
# vLLM 0.32.0 options whose value it parses with json.loads (`vllm serve --help=limit-mm-per-prompt`):
# `--limit-mm-per-prompt image=18`, the form FlagScale's examples and the notes write, exits with
# "Value image=18 cannot be converted"; `--limit-mm-per-prompt '{"image":18}'` works.
JSON_ENGINE_ARGS = frozenset({"limit_mm_per_prompt", "mm_processor_kwargs", "hf_overrides", "compilation_config",
                              "speculative_config", "kv_transfer_config", "override_generation_config",
                              "media_io_kwargs"})
# Set by the smoke runner itself; a recipe must not override them.
_RESERVED_ENGINE_ARGS = {"model", "host", "port", "served_model_name"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Model(Strict):
    id: ModelId = Field(description="upstream model id, as the card names it")
    source: Source = Field(description="where weights come from: 'tiny' / 'tiny-vl' (made by the project: "
                                       "tools/stages/tinymodel.py, tinyvl.py) or a hub name (modelscope, ...)")
    path: AbsPath = Field(description="model directory inside the container")
    host_path: AbsPath | None = Field(default=None, description="model directory on the host, mounted at path")
    weights_url: HttpsUrl | None = None
    # a shell command the card shows as is (the recipe author's); one line, no backticks
    download: Line | None = Field(default=None, description="shell command users run to fetch the weights")


class FlagScaleServe(Strict):
    """Where the release's FlagScale config lives in the image: flag_scale/examples/<example>/conf/."""

    # examples/<example>/ (what `flagscale serve <example>` names); default: the recipe name, '-' -> '_'
    example: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]{0,63}$")] | None = None
    # conf/serve/<size>.yaml
    size: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.]{0,31}$")] = "default"
    # FlagScale's benchmark settings (serve/<size>.yaml `profile:`), carried as the notes have them
    profile: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], int | float] = {}


class Serve(Strict):
    served_model_name: ServedName
    port: int = Field(default=9010, ge=1024, le=65535)
    # how the release is served: the engine's own entrypoint, or `flagscale serve <example>` (the notes' way)
    launcher: Literal["engine", "flagscale"] = "engine"
    # where the released configuration listens (the notes serve on 0.0.0.0); smoke tests always use loopback
    host: Annotated[str, Field(pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")] = "0.0.0.0"
    # what FlagScale's serve YAML carries under engine_args / engine_args_specific.vllm
    engine_args: EngineArgs = {}
    env: dict[EnvKey, EnvValue] = {}
    # machines the release spans, devices per machine and their kind (FlagScale hostfile `slots=`, `type=`)
    nnodes: int = Field(default=1, ge=1, le=64)
    nproc_per_node: int = Field(default=1, ge=1, le=64)
    device_type: Literal["gpu", "cpu", "npu"] = "gpu"
    # host addresses of the nodes, head first (the baked hostfile); empty: the site names them
    # (FLAGOS_HOSTFILE), as multi-machine releases must
    hosts: tuple[Annotated[str, Field(pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")], ...] = ()
    flagscale: FlagScaleServe = FlagScaleServe()
    ready_timeout_s: int = Field(default=900, ge=10)

    @model_validator(mode="after")
    def _nodes_add_up(self) -> Serve:
        if self.hosts and len(self.hosts) != self.nnodes:
            raise ValueError(f"hosts lists {len(self.hosts)} address(es) for nnodes {self.nnodes}")
        tp = int(self.engine_args.get("tensor_parallel_size", 1))
        pp = int(self.engine_args.get("pipeline_parallel_size", 1))
        if self.nnodes > 1 and tp * pp != self.nnodes * self.nproc_per_node:
            raise ValueError(f"tensor_parallel_size x pipeline_parallel_size = {tp * pp} does not use the "
                             f"{self.nnodes} x {self.nproc_per_node} devices of nnodes x nproc_per_node")
        return self

    @field_validator("engine_args")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(_RESERVED_ENGINE_ARGS & value.keys())
        if bad:
            raise ValueError(f"{', '.join(bad)} is set from serve/model keys, not engine_args")
        for key, item in value.items():
            if isinstance(item, dict) and key not in JSON_ENGINE_ARGS:
                raise ValueError(f"{key} takes no mapping (only {', '.join(sorted(JSON_ENGINE_ARGS))} do)")
            if isinstance(item, str) and key in JSON_ENGINE_ARGS:
                try:
                    parsed = json.loads(item)
                except ValueError:
                    parsed = None
                if not isinstance(parsed, dict):
                    example = re.sub(r"(\w+)=(\w+)", r"\1: \2", item)
                    raise ValueError(f"{key}: {item!r} is not JSON, and vLLM 0.32.0 parses --{key.replace('_', '-')} "
                                     f"as JSON: write it as a mapping, e.g. {key}: {{{example}}}")
        return value

    def image_limit(self) -> int | None:
        """Images per prompt the engine allows, when the recipe sets limit_mm_per_prompt (None: vLLM's default)."""
        limits = self.engine_args.get("limit_mm_per_prompt")
        if isinstance(limits, str):
            limits = json.loads(limits)
        image = limits.get("image") if isinstance(limits, dict) else None
        if isinstance(image, dict):  # vLLM's configurable form: {"image": {"count": 5, "width": 512, ...}}
            image = image.get("count")
        return int(image) if isinstance(image, int | float) and not isinstance(image, bool) else None


class RunProfile(Strict):
    """docker run facts that differ per release on top of the vendor's profile."""

    shm_size: str | None = Field(default=None, pattern=r"^[0-9]+[bkmgBKMG]?$")
    mounts: tuple[Mount, ...] = ()
    env: dict[EnvKey, EnvValue] = {}


class Build(Strict):
    platforms: tuple[Platform, ...] | None = None
    max_jobs: int = Field(default=2, ge=1)
    torch_cuda_arch_list: str | None = Field(default=None, pattern=r"^[0-9.+ ;]+$")
    flaggems: bool = True
    flaggems_ops: tuple[OpName, ...] = ()


class SmokeTest(Strict):
    prompt: Annotated[str, Field(min_length=1, max_length=8192)] = "Say hello."
    max_tokens: int = Field(default=16, ge=1, le=4096)
    # vision-language releases: PNGs sent with the prompt (as image_url data URLs); with a declared
    # limit_mm_per_prompt image limit, a request with one image too many must get the engine's 400
    images: int = Field(default=0, ge=0, le=16)


class OpTests(Strict):
    ops: tuple[OpName, ...] = ()
    dtypes: tuple[Literal["float16", "bfloat16", "float32"], ...] = ("float16", "bfloat16", "float32")


class Tests(Strict):
    smoke: SmokeTest = SmokeTest()
    op_tests: OpTests = OpTests()


class Release(Strict):
    image_name: Name
    tags: tuple[TagName, ...] = ()
    # publish refuses when pip-audit found more known vulnerabilities in the image's lock, or could not
    # look every package up (then the count proves nothing); None: show the count, refuse nothing
    max_vulnerabilities: int | None = Field(default=None, ge=0)


class Card(Strict):
    title: Title
    intro: Prose = ""
    environment: dict[Prose, Prose] = {}
    benchmarks: list[dict[Prose, Prose | float | int]] = []
    faq: list[dict[Literal["q", "a"], Prose]] = []


class Recipe(Strict):
    name: Name
    vendor: str
    model: Model
    serve: Serve
    run: RunProfile = RunProfile()
    build: Build = Build()
    tests: Tests = Tests()
    release: Release
    card: Card

    @field_validator("vendor")
    @classmethod
    def _known_vendor(cls, value: str) -> str:
        if value not in vendors.names():
            raise ValueError(f"unknown vendor {value!r}: use one of {', '.join(vendors.names())} (vendors.toml)")
        return value

    @model_validator(mode="after")
    def _images_within_the_limit(self) -> Recipe:
        images, limit = self.tests.smoke.images, self.serve.image_limit()
        if images and limit is not None and images > limit:
            raise ValueError(f"tests.smoke.images is {images}, more than serve.engine_args.limit_mm_per_prompt "
                             f"allows ({limit})")
        return self


def recipe_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or "/" in name_or_path:
        return candidate
    return paths.recipes_dir() / f"{name_or_path}.yaml"


def available() -> list[str]:
    return sorted(p.stem for p in paths.recipes_dir().glob("*.yaml"))


def load_recipe(name_or_path: str) -> tuple[Recipe, Path]:
    path = recipe_path(name_or_path)
    fix = "see recipes/tiny-cpu.yaml for a complete example"
    if not path.is_file():
        raise UserError(
            f"recipe {name_or_path!r} not found",
            where=str(path),
            fix=f"use one of: {', '.join(available()) or '(none)'}, or give a path to a .yaml file",
        )
    data = load_yaml(path, what="recipe", fix=fix)
    if not isinstance(data, dict):
        raise UserError("recipe must be a YAML mapping", where=str(path), fix=fix)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise to_user_error(exc, path, "invalid recipe", fix) from exc
    if recipe.name != path.stem and re.fullmatch(r"[a-z0-9._-]+", path.stem):
        raise UserError(
            f"recipe name {recipe.name!r} differs from its file name {path.stem!r}",
            where=f"{path} -> name",
            fix=f"set name: {path.stem}",
        )
    return recipe, path


def engine_arg_value(value: Any) -> Any:
    """An engine argument as vLLM's CLI and FlagScale's serve YAML both take it: a mapping becomes one JSON
    text. (FlagScale 0.8.0's flatten_dict_to_args turns a nested mapping into bare `--image 18` flags
    without its key, which vLLM refuses; a JSON string reaches `vllm serve` as one argument, since
    FlagScale starts it with an argument list.)"""
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return value


def engine_argv(recipe: Recipe, model_path: str, host: str, port: int) -> list[str]:
    """The API server's arguments as an argument list (never a shell string)."""
    return ["--model", model_path, *serve_flags(recipe, host, port)]


def serve_flags(recipe: Recipe, host: str, port: int) -> list[str]:
    """Every serve flag but the model: `vllm serve MODEL <these>`."""
    argv = ["--served-model-name", recipe.serve.served_model_name, "--host", host, "--port", str(port)]
    for key, raw in recipe.serve.engine_args.items():
        value = engine_arg_value(raw)
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            continue
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv
