"""How the smoke starts a release's engine: one function per launcher, each a context manager.

    engine       the image's own entrypoint (python -m vllm.entrypoints.openai.api_server), one container
    flagscale    `flagscale serve <example>` with the config baked into the image, in an idle container
    ray_cluster  one container per node, each a Ray node on its own loopback address (127.0.0.2, ...), then
                 `vllm serve` on node 0; the Ray cluster is started as FlagScale's script starts it, plus
                 the node address FlagScale leaves out

Each yields a Served: where the engine answers, whether it died, its log, and how to reach it (`call`).
Every container is removed when the block ends, on every exit path (tools.mech.docker.running_container),
and the logs are kept on the host first.

Loopback only. The single-node launchers use the host's network, with the engine bound to a loopback
address. A Ray cluster cannot be held to that: Ray binds its GCS, raylets, workers and monitor to every
interface unless the node's address is exactly 127.0.0.1 (hard-coded in Ray; no flag or variable moves
them). So the nodes share one private network namespace whose only interface is `lo` (node 0
`--network none`, the others `--network container:<node 0>`): there 127.0.0.2 and 127.0.0.3 are loopback
addresses as on the host, and a wildcard listener is reachable on loopback only. The smoke talks to
the engine from a thread that joins that namespace (tools.mech.netns; root), and checks its interfaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shlex
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tools.core.errors import UserError
from tools.core.profiles import docker_run_flags
from tools.core.recipe import Recipe, engine_argv, serve_flags
from tools.mech import netns
from tools.mech.console import info
from tools.mech.docker import Container, running_container, stop_client
from tools.stages import flagscale as fs_config

T = TypeVar("T")
ENGINE_MODULE = "vllm.entrypoints.openai.api_server"
LOOPBACK = "127.0.0.1"
# where a FlagScale container writes its scripts and logs: a host folder, so the engine's log outlives it
EXP_MOUNT = "/flagrelease-exp"
# Ray: one vLLM worker slot per node and CPU device; a small object store (it lives in /dev/shm)
RAY_OBJECT_STORE_BYTES = 200_000_000
RAY_START_TIMEOUT_S = 180
# the head's GCS port: Ray's default (FlagScale picks a free one; in the nodes' own namespace all are free)
RAY_PORT = 6379
# Ray's logs inside a node container, kept beside the node's log
RAY_LOGS = "/tmp/ray/session_latest/logs"


@dataclass
class Node:
    rank: int
    ip: str
    container: str
    log: str
    facts: dict = field(default_factory=dict)


@dataclass
class Served:
    """A started engine. `dead()` is None while it runs, else why it stopped."""

    launcher: str
    host: str
    port: int
    log: Path
    commands: list[str]
    containers: list[Container]
    nodes: list[Node] = field(default_factory=list)

    def dead(self) -> str | None:
        for container in self.containers:
            state = container.state()
            if not state.running:
                oom = " (killed: out of memory)" if state.oom_killed else ""
                return f"container {container.name} exited with code {state.exit_code}{oom}"
        return None

    def tail(self, lines: int) -> list[str]:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[-lines:]

    def keep_logs(self) -> None:
        """Copy what is still only inside the containers to the host (called before they go)."""

    def call(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """fn(*args, **kwargs) where the engine's address is reachable (here: the host's network)."""
        return fn(*args, **kwargs)


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network("127.0.0.0/8")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def node_ips(recipe: Recipe) -> list[str]:
    """The nodes' addresses for a smoke on this host: the recipe's hosts (all loopback), else 127.0.0.2..."""
    serve = recipe.serve
    ips = list(serve.hosts) or [f"127.0.0.{2 + i}" for i in range(serve.nnodes)]
    outside = [ip for ip in ips if not is_loopback(ip)]
    if outside:
        raise UserError(f"the smoke runs every node of {recipe.name} as a container on this host, on loopback; "
                        f"serve.hosts names {', '.join(outside)}", where="serve.hosts",
                        fix="list loopback addresses (127.0.0.2, 127.0.0.3, ...) or leave serve.hosts out")
    return ips


def launcher_of(recipe: Recipe) -> str:
    return "ray-cluster" if recipe.serve.nnodes > 1 else recipe.serve.launcher


def serve_host(recipe: Recipe) -> str:
    """Where the smoke's engine listens: node 0 of a cluster, the baked loopback host, else 127.0.0.1."""
    launcher = launcher_of(recipe)
    if launcher == "ray-cluster":
        return node_ips(recipe)[0]
    if launcher == "flagscale" and is_loopback(recipe.serve.host):
        return recipe.serve.host
    return LOOPBACK


def container_env(recipe: Recipe) -> dict[str, str]:
    return {k: env_value(v) for k, v in {**recipe.serve.env, **recipe.run.env}.items()}


def env_value(value: object) -> str:
    # vLLM parses its boolean variables with int(), so YAML true/false must become 1/0, not True/False.
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _flags(recipe: Recipe) -> list[str]:
    return docker_run_flags(recipe.vendor, shm_size=recipe.run.shm_size)


def _mounts(recipe: Recipe, model_dir: Path) -> list[str]:
    return [f"{model_dir}:{recipe.model.path}:ro", *recipe.run.mounts]


def _docker_run_line(image: str, recipe: Recipe, mounts: list[str], env: dict[str, str], entrypoint: str,
                     argv: list[str], name: str | None = None, network: str = "host") -> str:
    """What a user types to start the same container by hand."""
    return shlex.join(["docker", "run", "--rm", *(["-d", "--name", name] if name else []), "--network", network,
                       *_flags(recipe), *sum((["-v", m] for m in mounts), []),
                       *sum((["-e", f"{k}={v}"] for k, v in env.items()), []),
                       "--entrypoint", entrypoint, image, *argv])


# ---- engine: the image's entrypoint ------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """How the engine launcher runs the image: docker run flags, mounts, env and the engine's argv."""

    flags: list[str]
    mounts: list[str]
    env: dict[str, str]
    argv: list[str]

    def command_line(self, image_ref: str) -> list[str]:
        return ["docker", "run", "--rm", "--network", "host", *self.flags,
                *sum((["-v", m] for m in self.mounts), []),
                *sum((["-e", f"{k}={v}"] for k, v in self.env.items()), []),
                "--entrypoint", "python3", image_ref, *self.argv]


def run_spec(recipe: Recipe, host_model: Path, port: int, host: str = LOOPBACK) -> RunSpec:
    return RunSpec(flags=_flags(recipe), mounts=_mounts(recipe, host_model), env=container_env(recipe),
                   argv=["-m", ENGINE_MODULE, *engine_argv(recipe, recipe.model.path, host, port)])


class _EngineServed(Served):
    def tail(self, lines: int) -> list[str]:
        return self.containers[0].log_tail(lines)

    def keep_logs(self) -> None:
        self.containers[0].save_logs(self.log)


@contextlib.contextmanager
def engine(recipe: Recipe, image: str, *, model_dir: Path, host: str, port: int, log: Path,
           name_prefix: str) -> Iterator[Served]:
    spec = run_spec(recipe, model_dir, port, host)
    # what a user would type to reproduce this run by hand (shell-quoted: every value stays one word)
    command = shlex.join(spec.command_line(image))
    with running_container(image, spec.argv, name_prefix=name_prefix, flags=spec.flags, mounts=spec.mounts,
                           env=spec.env, entrypoint="python3") as container:
        info(f"  container {container.name}; log: {log}")
        yield _EngineServed("engine", host, port, log, [command], [container],
                            [Node(0, host, container.name, str(log))])


# ---- flagscale: `flagscale serve <example>` with the baked config -------------------------------------


class _FlagScaleServed(Served):
    pid_file: Path | None = None

    def dead(self) -> str | None:
        gone = super().dead()
        if gone or self.pid_file is None:
            return gone
        pid = self.pid_file.read_text().strip() if self.pid_file.exists() else ""
        if not pid.isdigit():
            return f"FlagScale wrote no engine pid ({self.pid_file})"
        if self.containers[0].exec(["test", "-d", f"/proc/{pid}"]).returncode != 0:
            return f"the engine started by FlagScale (pid {pid}) exited"
        return None


def flagscale_argv(recipe: Recipe, host: str, port: int) -> list[str]:
    """`flagscale serve <example>` with only what FlagScale's CLI can override: the port when the baked one
    is busy, the host when the baked one is not loopback (engine_args JSON, merged by FlagScale)."""
    argv = ["flagscale", "serve", fs_config.example_name(recipe)]
    if port != recipe.serve.port:
        argv += ["--port", str(port)]
    if host != recipe.serve.host:
        argv += ["--engine-args", json.dumps({"host": host})]
    return argv


@contextlib.contextmanager
def flagscale(recipe: Recipe, image: str, *, model_dir: Path, host: str, port: int, log: Path,
              name_prefix: str) -> Iterator[Served]:
    exp_host = log.with_suffix("")  # build/logs/<time>-smoke-<recipe>/: FlagScale's exp_dir lives here
    exp_host.mkdir(parents=True, exist_ok=True)
    # FlagScale's layout: <exp_dir>/<exp_name>/serve_logs/{host_0_localhost.output,pids/host_0_localhost.pid}
    exp_name = f"{fs_config.example_name(recipe)}_{recipe.serve.flagscale.size}"
    run_dir = exp_host / exp_name / "serve_logs"
    engine_log = run_dir / "host_0_localhost.output"
    mounts = [*_mounts(recipe, model_dir), f"{exp_host}:{EXP_MOUNT}"]
    env = {fs_config.ENV_EXP_DIR: EXP_MOUNT}
    argv = flagscale_argv(recipe, host, port)
    with running_container(image, ["infinity"], name_prefix=name_prefix, flags=_flags(recipe), mounts=mounts,
                           env=env, entrypoint="sleep") as container:
        commands = [_docker_run_line(image, recipe, mounts, env, "sleep", ["infinity"], name=container.name),
                    shlex.join(["docker", "exec", container.name, *argv])]
        served = _FlagScaleServed("flagscale", host, port, engine_log, commands, [container],
                                  [Node(0, host, container.name, str(engine_log))])
        info(f"  container {container.name} (idle); {shlex.join(argv)}")
        info(f"  FlagScale's output: {exp_host}; engine log: {engine_log}")
        code = container.exec_logged(argv, exp_host / "flagscale-serve.log", timeout=300)
        served.pid_file = run_dir / "pids" / "host_0_localhost.pid"
        if code != 0 or not served.pid_file.exists():
            cli = (exp_host / "flagscale-serve.log").read_text(errors="replace").splitlines()[-15:]
            raise UserError(f"`{shlex.join(argv)}` started no engine (exit {code}, no {served.pid_file.name}):\n"
                            + "\n".join(f"  | {line}" for line in cli),
                            where=str(exp_host / "flagscale-serve.log"),
                            fix="check the baked config under flag_scale/examples/ in the image (nox -s render)")
        yield served


# ---- ray-cluster: one container per node, one Ray cluster, `vllm serve` on node 0 --------------------

# Asked on node 0 once the engine answers: every Ray node and every actor, from the GCS.
_CLUSTER_FACTS = """
import json, sys
import ray
from ray._private import state
ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2], logging_level="ERROR", log_to_driver=False)
nodes = [{"ip": n["NodeManagerAddress"], "alive": bool(n["Alive"]), "cpus": n.get("Resources", {}).get("CPU", 0)}
         for n in ray.nodes()]
actors = [{"class": a["ActorClassName"], "name": a["Name"], "state": a["State"], "ip": a["Address"]["IPAddress"]}
          for a in state.actors().values()]
print("CLUSTER " + json.dumps({"nodes": nodes, "actors": actors}))
"""


class RayServed(Served):
    serve_proc: subprocess.Popen | None = None
    ray_address: str = ""
    workers_per_node: int = 1
    # a process in the nodes' network namespace (node 0's first one)
    netns_pid: int = 0

    def call(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        return netns.call_in(self.netns_pid, fn, *args, **kwargs)

    def network(self) -> dict:
        """The nodes' namespace: its interfaces and every TCP listener in it."""
        return {"interfaces": netns.interfaces(self.netns_pid),
                "listeners": [f"{item.address}:{item.port}" for item in netns.listening(self.netns_pid)]}

    def dead(self) -> str | None:
        gone = super().dead()
        if gone:
            return gone
        if self.serve_proc is not None and self.serve_proc.poll() is not None:
            return f"vllm serve on node 0 exited with code {self.serve_proc.returncode}"
        return None

    def keep_logs(self) -> None:
        for node, container in zip(self.nodes, self.containers, strict=True):
            container.copy_out(RAY_LOGS, Path(node.log).with_name(f"node{node.rank}-ray"))

    def cluster(self) -> dict:
        """Ray's own view: nodes (ip, alive, CPUs) and actors (class, name, state, node ip)."""
        proc = self.containers[0].exec(["python3", "-c", _CLUSTER_FACTS, self.ray_address, self.nodes[0].ip],
                                       timeout=120)
        for line in proc.stdout.splitlines():
            if line.startswith("CLUSTER "):
                return json.loads(line.removeprefix("CLUSTER "))
        raise RuntimeError(f"no answer from Ray on node 0: {(proc.stderr or proc.stdout).strip()[-300:]}")


def _enterable(container: Container) -> int:
    """The pid whose network namespace the nodes share, once we have proved we can join it."""
    pid = container.pid()
    try:
        netns.call_in(pid, lambda: None)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the nodes' private network (pid {pid}): {exc}",
                        where=f"container {container.name}",
                        fix="run the multi-node smoke as root (it joins the nodes' network namespace to talk "
                            "to the engine)") from exc
    return pid


def ray_start_argv(recipe: Recipe, rank: int, ip: str, head: str, port: int) -> list[str]:
    """FlagScale's `ray start` for a `type=cpu` hostfile line (--num-cpus=<slots>; gpu: --num-gpus), plus the
    node's address, which FlagScale never passes (Ray would advertise the default route's address)."""
    kind = {"cpu": "--num-cpus", "gpu": "--num-gpus"}.get(recipe.serve.device_type)
    slots = [f"{kind}={recipe.serve.nproc_per_node}"] if kind else \
        [f"--resources={json.dumps({recipe.serve.device_type: recipe.serve.nproc_per_node})}"]
    where = ["--head", f"--port={port}", f"--dashboard-host={ip}"] if rank == 0 else [f"--address={head}:{port}"]
    return ["ray", "start", *where, f"--node-ip-address={ip}", *slots,
            f"--object-store-memory={RAY_OBJECT_STORE_BYTES}", "--disable-usage-stats"]


def node_env(recipe: Recipe, ip: str) -> dict[str, str]:
    """A node's environment: the release's, plus its own address for vLLM and Ray (workers inherit the
    raylet's environment) and gloo kept on the loopback interface."""
    return {**container_env(recipe), "VLLM_HOST_IP": ip, "GLOO_SOCKET_IFNAME": "lo", "RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def ray_cluster(recipe: Recipe, image: str, *, model_dir: Path, host: str, port: int, log: Path,
                name_prefix: str) -> Iterator[Served]:
    ips = node_ips(recipe)
    logs_dir = log.with_suffix("")  # build/logs/<time>-smoke-<recipe>/nodeN.log
    logs_dir.mkdir(parents=True, exist_ok=True)
    ray_port = RAY_PORT
    mounts = _mounts(recipe, model_dir)
    serve_argv = ["vllm", "serve", recipe.model.path, *serve_flags(recipe, host, port)]
    clients: list[subprocess.Popen] = []
    with contextlib.ExitStack() as stack:
        # registered first, so it runs last: the containers are gone, so the exec clients end
        stack.callback(lambda: [stop_client(proc) for proc in clients])
        served = RayServed("ray-cluster", host, port, logs_dir / "node0.log", [], [])
        served.workers_per_node = recipe.serve.nproc_per_node
        for rank, ip in enumerate(ips):
            env = node_env(recipe, ip)
            # node 0 makes the private namespace (only `lo`), the others join it
            network = "none" if rank == 0 else f"container:{served.containers[0].name}"
            container = stack.enter_context(running_container(
                image, ["infinity"], name_prefix=f"{name_prefix}-node{rank}", flags=_flags(recipe),
                mounts=mounts, env=env, entrypoint="sleep", network=network))
            node = Node(rank, ip, container.name, str(logs_dir / f"node{rank}.log"))
            served.containers.append(container)
            served.nodes.append(node)
            if rank == 0:
                served.netns_pid = _enterable(container)
            start = ray_start_argv(recipe, rank, ip, ips[0], ray_port)
            served.commands += [_docker_run_line(image, recipe, mounts, env, "sleep", ["infinity"], container.name,
                                                 network),
                                shlex.join(["docker", "exec", container.name, *start])]
            info(f"  node{rank} {ip}: container {container.name}; log: {node.log}")
            code = container.exec_logged(start, Path(node.log), timeout=RAY_START_TIMEOUT_S)
            if code != 0:
                tail = Path(node.log).read_text(errors="replace").splitlines()[-15:]
                raise UserError(f"`ray start` on node{rank} ({ip}) failed (exit {code}):\n"
                                + "\n".join(f"  | {line}" for line in tail), where=node.log,
                                fix="read the node's log; another Ray or smoke may hold the port on this address")
        served.ray_address = f"{ips[0]}:{ray_port}"
        served.commands.append(shlex.join(["docker", "exec", served.containers[0].name, *serve_argv]))
        served.serve_proc = served.containers[0].exec_background(serve_argv, served.log)
        clients.append(served.serve_proc)
        info(f"  Ray cluster {served.ray_address}: {len(ips)} nodes; vllm serve on node0 {host}:{port}")
        yield served
