"""Recipe -> FlagScale serve config, in FlagScale's own layout, baked into the image.

`flagscale serve <example>` reads <site-packages>/flag_scale/examples/<example>/conf/serve.yaml, which
names conf/serve/<size>.yaml (engine_args) and, for releases that span machines, a hostfile. The files
have the keys and shape of FlagScale 0.8.0's own examples (ernie45, kimi_k2, qwen2_5_vl). What differs per
site comes from environment variables that OmegaConf resolves when FlagScale reads the config, so nobody
edits a file inside the image:

    FLAGOS_HOSTFILE   the site's hostfile (`IP slots=N type=T`, head first); default: the baked one
    FLAGOS_CONTAINER  the container name FlagScale `docker exec`s into on the workers (default: flagos)
    FLAGOS_SSH_PORT   the workers' sshd port (default: 22)
    FLAGOS_EXP_DIR    where FlagScale writes its scripts and logs (default: /tmp/flagscale)

Every value is written with yaml.safe_dump, so recipe text lands as YAML data, never as structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from tools.core.recipe import Recipe, engine_arg_value

# engine_args keys the notes keep under engine_args_specific.vllm (vLLM-only settings); the rest stay
# under engine_args, as in FlagScale's ernie45 and kimi_k2 examples
VLLM_SPECIFIC = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "gpu_memory_utilization",
                 "trust_remote_code", "enforce_eager", "enable_chunked_prefill", "distributed_executor_backend")
CONTAINER = "flagos"
ENV_HOSTFILE = "FLAGOS_HOSTFILE"
ENV_CONTAINER = "FLAGOS_CONTAINER"
ENV_SSH_PORT = "FLAGOS_SSH_PORT"
ENV_EXP_DIR = "FLAGOS_EXP_DIR"


@dataclass(frozen=True)
class ServeConfig:
    example: str
    size: str
    # path under flag_scale/examples/ -> file text
    files: dict[str, str]

    def conf_path(self, site_packages: str) -> str:
        return f"{site_packages}/flag_scale/examples/{self.example}/conf"


def example_name(recipe: Recipe) -> str:
    return recipe.serve.flagscale.example or recipe.name.replace("-", "_").replace(".", "_")


def exp_name(recipe: Recipe) -> str:
    """FlagScale's experiment name: its scripts and logs go to <exp_dir>/<exp_name>/serve_logs/."""
    return f"{example_name(recipe)}_{recipe.serve.flagscale.size}"


def _env_value(value: object) -> object:
    # FlagScale exports envs with `export K=V`; YAML booleans would print as True/False, vLLM reads 1/0
    if isinstance(value, bool):
        return 1 if value else 0
    return value


def engine_args(recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
    """(engine_args, engine_args_specific.vllm) as the serve/<size>.yaml carries them."""
    common: dict[str, Any] = {"model": recipe.model.path, "served_model_name": recipe.serve.served_model_name,
                              "host": recipe.serve.host, "port": recipe.serve.port}
    specific: dict[str, Any] = {}
    for key, value in recipe.serve.engine_args.items():
        # a mapping (limit_mm_per_prompt) as JSON text, exactly as engine_argv passes it
        (specific if key in VLLM_SPECIFIC else common)[key] = engine_arg_value(value)
    return common, specific


def hostfile_text(recipe: Recipe) -> str:
    serve = recipe.serve
    lines = ["# ip slots type=xxx[optional]  (head node first, then the workers)"]
    hosts = serve.hosts or ()
    for i, host in enumerate(hosts):
        lines.append("# master node" if i == 0 else "# worker node")
        lines.append(f"{host} slots={serve.nproc_per_node} type={serve.device_type}")
    if not hosts:
        lines.append(f"# none baked: set {ENV_HOSTFILE} to your hostfile with {serve.nnodes} lines like")
        lines.append(f"# 10.0.0.1 slots={serve.nproc_per_node} type={serve.device_type}")
    return "\n".join(lines) + "\n"


def serve_config(recipe: Recipe, site_packages: str) -> ServeConfig:
    """The release's FlagScale files (paths relative to flag_scale/examples/)."""
    serve = recipe.serve
    example, size = example_name(recipe), serve.flagscale.size
    conf = f"{site_packages}/flag_scale/examples/{example}/conf"
    runner: dict[str, Any] = {}
    if serve.nnodes > 1:
        runner = {
            "hostfile": f"${{oc.env:{ENV_HOSTFILE},{conf}/hostfile.txt}}" if serve.hosts
            else f"${{oc.env:{ENV_HOSTFILE}}}",
            "nnodes": serve.nnodes,
            "nproc_per_node": serve.nproc_per_node,
            "docker": f"${{oc.env:{ENV_CONTAINER},{CONTAINER}}}",
        }
    runner["ssh_port"] = f"${{oc.env:{ENV_SSH_PORT},22}}"
    # Where FlagScale 0.8.0 itself moves `experiment.deploy` when it loads the config (the notes' examples
    # still use the old place). Left at the old place, `flagscale serve NAME --port N` dies: FlagScale moves
    # it into a struct node and then cannot add the port (omegaconf ConfigAttributeError).
    runner["deploy"] = {"use_fs_serve": False}
    top = {
        "defaults": ["_self_", {"serve": size}],
        "experiment": {
            "exp_name": exp_name(recipe),
            "exp_dir": f"${{oc.env:{ENV_EXP_DIR},/tmp/flagscale}}/${{experiment.exp_name}}",
            "task": {"type": "serve"},
            "runner": runner,
            "envs": {key: _env_value(value) for key, value in {**serve.env, **recipe.run.env}.items()},
        },
        "action": "run",
        "hydra": {"run": {"dir": "${experiment.exp_dir}/hydra"}},
    }
    common, specific = engine_args(recipe)
    item: dict[str, Any] = {"serve_id": "vllm_model", "engine": "vllm", "engine_args": common}
    if specific:
        item["engine_args_specific"] = {"vllm": specific}
    if serve.flagscale.profile:
        item["profile"] = dict(serve.flagscale.profile)
    files = {
        f"{example}/conf/serve.yaml": _dump(top),
        f"{example}/conf/serve/{size}.yaml": _dump([item]),
    }
    if serve.nnodes > 1:
        files[f"{example}/conf/hostfile.txt"] = hostfile_text(recipe)
    return ServeConfig(example=example, size=size, files=files)


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=False)
