"""The FlagScale config each image carries has the shape and values its release note sets by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import PROJECT_ROOT
from tools.core.recipe import Recipe, load_recipe, recipe_path
from tools.stages.flagscale import serve_config

NOTES = PROJECT_ROOT.parent / "shared" / "release-notes"
SITE = "/opt/venv/lib/python3.12/site-packages"


def _note_yaml(note: str, marker: str) -> Any:
    """The YAML of the note's code block whose first line is `vim ...<marker>`."""
    text = (NOTES / note).read_text(encoding="utf-8")
    for block in text.split("```")[1::2]:
        lines = block.splitlines()[1:]  # drop the fence's language word
        if lines and lines[0].startswith("vim ") and lines[0].endswith(marker):
            return yaml.safe_load("\n".join(lines[1:]))
    raise AssertionError(f"{note} has no block editing {marker}")


def _files(name: str) -> dict[str, Any]:
    recipe, _ = load_recipe(name)
    return {rel: (yaml.safe_load(text) if rel.endswith(".yaml") else text)
            for rel, text in serve_config(recipe, SITE).files.items()}


@pytest.mark.skipif(not NOTES.is_dir(), reason="the release notes live in ../shared/release-notes")
def test_ernie_matches_its_note():
    ours = _files("ernie-4.5-300b-a47b-nvidia")
    note_top = _note_yaml("ernie-4.5-300b-a47b-nvidia.md", "examples/ernie45/conf/serve.yaml")
    note_serve = _note_yaml("ernie-4.5-300b-a47b-nvidia.md", "examples/ernie45/conf/serve/300b.yaml")
    top, serve = ours["ernie45/conf/serve.yaml"], ours["ernie45/conf/serve/300b.yaml"]
    assert top["defaults"] == note_top["defaults"] == ["_self_", {"serve": "300b"}]
    assert top["experiment"]["exp_name"] == note_top["experiment"]["exp_name"]
    assert top["experiment"]["task"] == note_top["experiment"]["task"]
    # the note's experiment.deploy sits where FlagScale moves it on load (runner.deploy): there `--port` works
    assert "deploy" not in top["experiment"]
    assert top["experiment"]["runner"]["deploy"] == note_top["experiment"]["deploy"]
    assert (top["action"], top["hydra"]) == (note_top["action"], note_top["hydra"])
    runner, note_runner = top["experiment"]["runner"], note_top["experiment"]["runner"]
    assert set(runner) == set(note_runner) | {"deploy"}
    assert (runner["nnodes"], runner["nproc_per_node"]) == (note_runner["nnodes"], note_runner["nproc_per_node"])
    # what the note edits by hand comes from the site's environment
    assert runner["hostfile"] == "${oc.env:FLAGOS_HOSTFILE}"
    assert runner["docker"] == "${oc.env:FLAGOS_CONTAINER,flagos}" and note_runner["docker"] == "flagos"
    assert runner["ssh_port"] == "${oc.env:FLAGOS_SSH_PORT,22}" and note_runner["ssh_port"] == 22
    # the note's booleans are exported as True/False by FlagScale; we write 1/0, which vLLM's int() reads
    note_envs = {k: int(v) if isinstance(v, bool) else v for k, v in note_top["experiment"]["envs"].items()}
    assert top["experiment"]["envs"] == note_envs
    # the note's before_start activates a conda env; the image's venv is already on PATH
    assert "cmds" not in top["experiment"] and "before_start" in note_top["experiment"]["cmds"]
    (item,), (note_item,) = serve, note_serve
    assert {k: v for k, v in item["engine_args"].items() if k != "served_model_name"} == note_item["engine_args"]
    # the note serves without a name, so vLLM names the model by its path; we say so explicitly
    assert item["engine_args"]["served_model_name"] == note_item["engine_args"]["model"]
    assert item["engine_args_specific"] == note_item["engine_args_specific"]
    assert item["profile"] == note_item["profile"]
    assert (item["serve_id"], item["engine"]) == (note_item["serve_id"], note_item["engine"])


def test_kimi_carries_the_values_its_note_sets():
    ours = _files("kimi-k2-instruct-nvidia")
    top, (item,) = ours["kimik2/conf/serve.yaml"], ours["kimik2/conf/serve/1t.yaml"]
    assert top["defaults"] == ["_self_", {"serve": "1t"}]
    runner = top["experiment"]["runner"]
    assert (runner["nnodes"], runner["nproc_per_node"]) == (2, 8)
    assert top["experiment"]["envs"] == {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
                                         "CUDA_DEVICE_MAX_CONNECTIONS": 1, "USE_FLAGGEMS": 1,
                                         "RAY_CGRAPH_get_timeout": 60}
    assert item["engine_args"] == {"model": "/models/Kimi-K2-Instruct",
                                   "served_model_name": "Kimi-K2-Instruct-nvidia-origin", "host": "0.0.0.0",
                                   "port": 30000, "uvicorn_log_level": "warning", "max_model_len": 32768}
    assert item["engine_args_specific"]["vllm"] == {
        "tensor_parallel_size": 16, "pipeline_parallel_size": 1, "gpu_memory_utilization": 0.98,
        "trust_remote_code": True, "enforce_eager": True, "enable_chunked_prefill": True}
    assert "# none baked: set FLAGOS_HOSTFILE" in ours["kimik2/conf/hostfile.txt"]


def test_single_node_release_has_no_hostfile_and_no_ray_runner():
    ours = _files("robobrain2-7b-fp8dynamic-nvidia")
    # the note's own FlagScale example and size: `flagscale serve robobrain2`, serve/7b.yaml
    assert set(ours) == {"robobrain2/conf/serve.yaml", "robobrain2/conf/serve/7b.yaml"}
    assert ours["robobrain2/conf/serve.yaml"]["experiment"]["runner"] == {
        "ssh_port": "${oc.env:FLAGOS_SSH_PORT,22}", "deploy": {"use_fs_serve": False}}


def _recipe(**serve: Any) -> Recipe:
    data = yaml.safe_load(recipe_path("tiny-cpu").read_text())
    data["serve"].update(serve)
    return Recipe.model_validate(data)


def test_baked_hosts_make_the_hostfile_and_its_default():
    recipe = _recipe(nnodes=2, device_type="cpu", hosts=["127.0.0.2", "127.0.0.3"],
                     engine_args={"pipeline_parallel_size": 2, "max_model_len": 256})
    files = serve_config(recipe, "/opt/venv/lib/python3.11/site-packages").files
    lines = [line for line in files["tiny_cpu/conf/hostfile.txt"].splitlines() if not line.startswith("#")]
    assert lines == ["127.0.0.2 slots=1 type=cpu", "127.0.0.3 slots=1 type=cpu"]
    runner = yaml.safe_load(files["tiny_cpu/conf/serve.yaml"])["experiment"]["runner"]
    assert runner["hostfile"] == ("${oc.env:FLAGOS_HOSTFILE,"
                                  "/opt/venv/lib/python3.11/site-packages/flag_scale/examples/tiny_cpu/conf/hostfile.txt}")


@pytest.mark.parametrize(("serve", "message"), [
    ({"nnodes": 2, "hosts": ["127.0.0.2"]}, "hosts lists 1 address"),
    ({"nnodes": 2, "nproc_per_node": 8, "engine_args": {"tensor_parallel_size": 8}}, "does not use the 2 x 8"),
    ({"hosts": ["10.0.0.1; rm -rf /"]}, "String should match pattern"),
])
def test_inconsistent_nodes_are_refused(serve, message):
    with pytest.raises(ValueError, match=message):
        _recipe(**serve)


def test_recipe_text_lands_as_yaml_data():
    hostile = 'x": 1\n  injected: {a: b}\n- serve_id: evil'
    with pytest.raises(ValueError, match="served_model_name"):  # refused where it enters ...
        _recipe(served_model_name=hostile)
    recipe = _recipe()  # ... and inert where it lands, even pushed past validation
    recipe = recipe.model_copy(update={"serve": recipe.serve.model_copy(update={"served_model_name": hostile})})
    files = serve_config(recipe, "/site").files
    (item,) = yaml.safe_load(files["tiny_cpu/conf/serve/default.yaml"])
    assert item["engine_args"]["served_model_name"] == hostile and "injected" not in item["engine_args"]


def test_render_writes_the_files_next_to_the_dockerfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tools.cli import main

    monkeypatch.setenv("FLAGREL_BUILD", str(tmp_path))
    assert main(["render", "ernie-4.5-300b-a47b-nvidia"]) == 0
    conf = tmp_path / "rendered" / "ernie-4.5-300b-a47b-nvidia" / "flagscale" / "ernie45" / "conf"
    assert sorted(p.relative_to(conf).as_posix() for p in conf.rglob("*") if p.is_file()) == [
        "hostfile.txt", "serve.yaml", "serve/300b.yaml"]


def _flagscale_flatten(args: dict[str, Any]) -> list[str]:
    """FlagScale 0.8.0's rule for engine_args -> `vllm serve` flags (flagscale/runner/utils.py
    flatten_dict_to_args, as its run_inference_engine.py calls it): key -> --key-with-dashes value, true -> the
    bare flag, false dropped, a list -> --key v1 v2, and a nested mapping flattened WITHOUT its own key."""
    out: list[str] = []
    for key, value in args.items():
        if isinstance(value, dict):
            out += _flagscale_flatten(value)
        elif isinstance(value, bool):
            out += [f"--{key.replace('_', '-')}"] if value else []
        elif isinstance(value, list):
            out += [f"--{key.replace('_', '-')}", *map(str, value)]
        else:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def test_image_limit_survives_flagscales_flattening_and_matches_our_own_argv():
    from tools.core.recipe import engine_argv

    recipe, _ = load_recipe("qwen2.5-vl-32b-instruct-nvidia")
    (item,) = _files(recipe.name)["qwen2_5_vl/conf/serve/32b_instruct.yaml"]
    args = {**item["engine_args_specific"]["vllm"], **item["engine_args"]}
    # a YAML mapping here would become a bare `--image 18`: it is one JSON string instead
    assert args["limit_mm_per_prompt"] == '{"image":18}'
    flags = _flagscale_flatten({k: v for k, v in args.items() if k != "model"})
    i = flags.index("--limit-mm-per-prompt")
    assert flags[i + 1] == '{"image":18}' and "--image" not in flags
    ours = engine_argv(recipe, recipe.model.path, recipe.serve.host, recipe.serve.port)
    assert ours[ours.index("--limit-mm-per-prompt") + 1] == flags[i + 1]
    # the same flags, whoever starts the engine
    assert sorted(flags) == sorted(ours[2:])


def test_the_flattening_rule_breaks_a_nested_mapping():
    # why the mapping must not reach FlagScale as YAML structure
    assert _flagscale_flatten({"limit_mm_per_prompt": {"image": 18}}) == ["--image", "18"]
