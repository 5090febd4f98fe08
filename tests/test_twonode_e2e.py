"""Serving the way the release notes serve, for real: `flagscale serve` in the image, and two Ray nodes on
one host (loopback addresses 127.0.0.2/127.0.0.3) holding one pipeline stage each.

The e2e tests build the two images (a no-op when their content keys exist) and serve each once; the
others run the same launchers on the plain Debian base to prove that a failed start and a Ctrl-C leave
no container behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
from pathlib import Path

import pytest
import yaml

from tools.core.errors import UserError
from tools.core.recipe import load_recipe
from tools.mech import docker
from tools.mech.docker import image_id, inspect_image, leftover_containers
from tools.stages import launch, results
from tools.stages import smoke as smoke_stage
from tools.stages.smoke import NAME_PREFIX, SmokeFailed, smoke

pytestmark = pytest.mark.docker

ALL_PASSED = {"models": True, "chat": True, "stream": True, "stamp": True}


def _ours_left(recipe, report) -> set[str]:
    """This run's containers that still exist (other runs on the same engine may have their own)."""
    return set(leftover_containers(f"{NAME_PREFIX}-{recipe.name}")) & {n["container"] for n in report.nodes}


def _gib(text: str) -> float:
    """docker stats' memory text (e.g. '2.93GiB', '812.5MiB') in GiB."""
    number, unit = re.fullmatch(r"([0-9.]+)([KMG]i?B)", text).groups()
    return float(number) / {"KiB": 1024**2, "MiB": 1024, "GiB": 1}[unit]


# ---- FlagScale, one node -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flagscale_run(tiny_cpu_flagscale_image, tmp_path_factory, monkeypatch_module):
    build = tmp_path_factory.mktemp("fs") / "build"
    monkeypatch_module.setenv("FLAGREL_BUILD", str(build))
    recipe, _ = load_recipe("tiny-cpu-flagscale")
    _, image = tiny_cpu_flagscale_image
    # the recipe's port is held busy, so the smoke moves the engine with FlagScale's own --port
    with socket.socket() as busy:
        with contextlib.suppress(OSError):  # already busy: the same path
            busy.bind(("127.0.0.1", recipe.serve.port))
            busy.listen()
        report = smoke(recipe, image.key_ref)
    print(report.summary())
    return recipe, image, report


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.e2e
def test_flagscale_serve_passes_the_openai_checks_and_the_stamp(flagscale_run) -> None:
    recipe, image, report = flagscale_run
    assert report.launcher == "flagscale" and report.host == "127.0.0.1"
    assert {c.name: c.passed for c in report.checks} == ALL_PASSED, report.summary()
    assert report.passed and report.start_to_ready_s and report.ttft_s is not None
    assert report.launch_s is not None and report.launch_s < report.start_to_ready_s
    stored = results.load(image_id(image.key_ref), recipe.name, "smoke")
    assert stored is not None and stored.passed and stored.summary["launcher"] == "flagscale"
    assert _ours_left(recipe, report) == set()


@pytest.mark.e2e
def test_flagscale_serve_starts_the_engine_from_the_baked_config(flagscale_run) -> None:
    """`flagscale serve tiny_cpu_flagscale`, no file edited: FlagScale resolved the config baked into the
    image and ran `vllm serve` with the recipe's values; its engine log is the one the report names."""
    recipe, _, report = flagscale_run
    assert report.port != recipe.serve.port
    assert report.docker_run.splitlines()[-1].endswith(f"flagscale serve tiny_cpu_flagscale --port {report.port}")
    engine_log = Path(report.container_log)
    assert engine_log.name == "host_0_localhost.output" and engine_log.is_file()
    serve_logs = engine_log.parent
    resolved = yaml.safe_load((serve_logs / "scripts" / "serve.yaml").read_text())
    # read from the image's examples tree: flag_scale/examples/tiny_cpu_flagscale/conf
    assert resolved["experiment"]["exp_name"] == "tiny_cpu_flagscale_tiny"
    assert resolved["experiment"]["exp_dir"] == f"{launch.EXP_MOUNT}/tiny_cpu_flagscale_tiny"
    args = resolved["serve"][0]["engine_args"]
    assert (args["model"], args["served_model_name"], args["host"], args["port"]) == \
        ("/models/tiny-llama", "tiny-cpu-flagos", "127.0.0.1", report.port)
    assert resolved["serve"][0]["engine_args_specific"]["vllm"]["enforce_eager"] is True
    assert resolved["experiment"]["envs"]["VLLM_CPU_KVCACHE_SPACE"] == 1
    script = (serve_logs / "scripts" / "host_0_localhost_run.sh").read_text()
    assert "flagscale/serve/run_inference_engine.py" in script and "ray start" not in script
    assert (serve_logs / "pids" / "host_0_localhost.pid").read_text().strip().isdigit()
    text = engine_log.read_text(errors="replace")
    assert "Starting vLLM" in text or "Application startup complete" in text, text[-2000:]


# ---- two nodes through Ray ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_two_node_image_shares_the_single_node_images_install_layers(tiny_cpu_image, tiny_cpu_2node_image,
                                                                         debian_base, tmp_path):
    """Ray and the ssh client go on top of the same locked install: one multi-GB layer on disk, not two.

    Both images are built here on a base of their own (the session's base plus a one-line file: new cache
    keys from the first step on). With the cache that earlier builds left, BuildKit would pick, for each image, the
    cached lineage that reaches deepest, and the no-cache rebuilds of other tests leave several."""
    from tools.pipeline import context_for
    from tools.stages.build import build_image
    from tools.stages.plan import BuildOptions, plan_for

    base = f"flagrel-probe-base:{secrets.token_hex(4)}"
    (tmp_path / "probe").write_text(base)
    (tmp_path / "Dockerfile").write_text(f"FROM {debian_base}\nCOPY probe /etc/flagrelease-probe\n")
    docker.call(["buildx", "build", "--quiet", "-t", base, str(tmp_path)], timeout=300)
    options = BuildOptions(base_image=base)
    layers: dict[str, list[str]] = {}
    probes: list[str] = []
    try:
        for recipe in ("tiny-cpu", "tiny-cpu-2node"):
            plan, loaded, _, recipe_file = plan_for(recipe, "cpu", options)
            probe = build_image(context_for(plan, loaded, recipe_file, options), options, revision="layer probe")
            probes += [probe.key_ref, probe.image_id]
            layers[recipe] = inspect_image(probe.image_id)["RootFS"]["Layers"]
    finally:
        for _, image in (tiny_cpu_image, tiny_cpu_2node_image):  # :latest back to the session's images
            docker.call(["tag", image.image_id, image.ref])
        docker.call(["rmi", *probes, base], check=False)  # by tag and id: no untagged image stays behind
    single, multi = layers["tiny-cpu"], layers["tiny-cpu-2node"]
    # all but the single-node image's last three (patched overlay, FlagScale config, the proving RUN)
    assert multi[:len(single) - 3] == single[:-3]
    assert len(multi) == len(single) + 2  # Ray's locked part, the ssh client


@pytest.fixture(scope="module")
def twonode_run(tiny_cpu_2node_image, tmp_path_factory, monkeypatch_module):
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the two-node smoke joins the nodes' private network namespace, which needs root")
    build = tmp_path_factory.mktemp("twonode") / "build"
    monkeypatch_module.setenv("FLAGREL_BUILD", str(build))
    recipe, _ = load_recipe("tiny-cpu-2node")
    _, image = tiny_cpu_2node_image
    report = smoke(recipe, image.key_ref)
    print(report.summary())
    return recipe, image, report


@pytest.mark.e2e
def test_two_nodes_serve_through_ray_and_pass_the_checks(twonode_run) -> None:
    recipe, image, report = twonode_run
    assert report.launcher == "ray-cluster" and report.host == "127.0.0.2"
    assert {c.name: c.passed for c in report.checks} == {**ALL_PASSED, "cluster": True, "isolation": True}, \
        report.summary()
    assert report.passed and report.start_to_ready_s
    saved = json.loads(Path(report.report_path).read_text())
    assert saved["nodes"] == report.nodes and saved["start_to_ready_s"] == report.start_to_ready_s
    assert len(report.nodes) == 2 and _ours_left(recipe, report) == set()


@pytest.mark.e2e
def test_report_shows_both_nodes_alive_with_one_vllm_worker_each(twonode_run) -> None:
    _, _, report = twonode_run
    assert [n["ip"] for n in report.nodes] == ["127.0.0.2", "127.0.0.3"]
    for rank, node in enumerate(report.nodes):
        assert node["rank"] == rank and node["alive"] is True and node["cpus"] == 1.0
        assert len(node["workers"]) == 1 and node["workers"][0].endswith(f"PP{rank}"), node
        assert re.fullmatch(rf"{NAME_PREFIX}-tiny-cpu-2node-node{rank}-[0-9a-f]{{8}}", node["container"])
        # the head holds the API server, the engine core and stage 0; the other only stage 1
        assert 0.2 < _gib(node["memory"]) < 8, node["memory"]


@pytest.mark.e2e
def test_nothing_listens_outside_loopback(twonode_run) -> None:
    """Ray binds every interface; the nodes' shared namespace has no interface but lo, and the API server,
    Ray's GCS (6379) and the client server are among its listeners."""
    _, _, report = twonode_run
    assert report.network["interfaces"] == ["lo"]
    listeners = report.network["listeners"]
    assert f"127.0.0.2:{report.port}" in listeners and any(item.endswith(":6379") for item in listeners)
    assert "--network none" in report.docker_run.splitlines()[0]  # node 0 makes the namespace
    assert f"--network container:{report.nodes[0]['container']}" in report.docker_run


@pytest.mark.e2e
def test_each_nodes_log_is_kept(twonode_run) -> None:
    _, _, report = twonode_run
    head, other = (Path(n["log"]) for n in report.nodes)
    head_text, other_text = head.read_text(errors="replace"), other.read_text(errors="replace")
    assert "--node-ip-address=127.0.0.2" in head_text and "vllm serve /models/tiny-llama" in head_text
    assert "--address=127.0.0.2:" in other_text and "--node-ip-address=127.0.0.3" in other_text
    # Ray's own logs of each node came out of the container before it was removed; in them, each node's
    # vLLM worker says which pipeline stage it holds (Ray forwards some of these lines to the head's log)
    for rank, log in enumerate((head, other)):
        ray_logs = log.with_name(f"node{rank}-ray")
        assert (ray_logs / "raylet.out").is_file(), sorted(p.name for p in ray_logs.iterdir())
        workers = "".join(p.read_text(errors="replace") for p in ray_logs.glob("worker-*.out"))
        assert re.search(rf"rank {rank} in world size 2 is assigned as .*PP rank {rank}", workers), rank


# ---- failed starts and Ctrl-C leave nothing behind (plain Debian base: no Ray, no vLLM) ----------------


def test_a_failed_ray_start_removes_both_containers(debian_base, build_dir, tmp_path) -> None:
    recipe, _ = load_recipe("tiny-cpu-2node")
    before = set(leftover_containers(f"{NAME_PREFIX}-{recipe.name}"))
    with pytest.raises(UserError) as err:
        smoke(recipe, debian_base, model_dir=tmp_path)
    assert "`ray start` on node0 (127.0.0.2) failed" in err.value.what
    node_log = Path(err.value.where)
    assert node_log.name == "node0.log" and "ray start --head" in node_log.read_text()
    assert set(leftover_containers(f"{NAME_PREFIX}-{recipe.name}")) <= before
    # recorded like any other failed smoke
    stored = results.load(image_id(debian_base), recipe.name, "smoke")
    assert stored is not None and not stored.passed and "ray start" in stored.summary["failure"]


def test_an_engine_that_dies_is_reported_at_once_and_both_nodes_go(debian_base, build_dir, tmp_path,
                                                                    monkeypatch) -> None:
    # Ray "starts" (a stand-in that succeeds); `vllm serve` is missing, so the engine dies at once
    monkeypatch.setattr(launch, "ray_start_argv", lambda *args: ["true"])
    recipe, _ = load_recipe("tiny-cpu-2node")
    before = set(leftover_containers(f"{NAME_PREFIX}-{recipe.name}"))
    with pytest.raises(SmokeFailed) as caught:
        smoke(recipe, debian_base, model_dir=tmp_path, timeout_s=120)
    assert "vllm serve on node 0 exited with code" in caught.value.what
    assert caught.value.report.start_to_ready_s is None
    assert set(leftover_containers(f"{NAME_PREFIX}-{recipe.name}")) <= before


def test_ctrl_c_while_waiting_removes_both_containers(debian_base, build_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(launch, "ray_start_argv", lambda *args: ["true"])
    seen: list[list[str]] = []

    def interrupt(served, *args):
        seen.append([c.name for c in served.containers if c.state().running])
        raise KeyboardInterrupt

    monkeypatch.setattr(smoke_stage, "_wait_ready", interrupt)
    recipe, _ = load_recipe("tiny-cpu-2node")
    before = set(leftover_containers(f"{NAME_PREFIX}-{recipe.name}"))
    with pytest.raises(KeyboardInterrupt):
        smoke(recipe, debian_base, model_dir=tmp_path)
    assert len(seen[0]) == 2  # both nodes were up when the interrupt came
    assert set(leftover_containers(f"{NAME_PREFIX}-{recipe.name}")) <= before


def _failed_start(recipe_name: str, image: str, model_dir: Path) -> UserError:
    """The smoke's error for a start that cannot work; it leaves no container behind."""
    recipe, _ = load_recipe(recipe_name)
    before = set(leftover_containers(f"{NAME_PREFIX}-{recipe.name}"))
    with pytest.raises(UserError) as err:
        smoke(recipe, image, model_dir=model_dir)
    assert set(leftover_containers(f"{NAME_PREFIX}-{recipe.name}")) <= before
    return err.value


def test_flagscale_missing_from_the_image_is_a_clear_failed_start(debian_base, build_dir, tmp_path) -> None:
    err = _failed_start("tiny-cpu-flagscale", debian_base, tmp_path)
    assert "flagscale serve tiny_cpu_flagscale" in err.what and "started no engine" in err.what


def test_without_rights_to_join_the_nodes_network_it_says_so(debian_base, build_dir, tmp_path, monkeypatch) -> None:
    def refused(pid, fn, *args, **kwargs):
        raise PermissionError(1, f"cannot join the network namespace of pid {pid}: Operation not permitted")

    monkeypatch.setattr(launch.netns, "call_in", refused)
    err = _failed_start("tiny-cpu-2node", debian_base, tmp_path)
    assert "cannot reach the nodes' private network" in err.what and "root" in err.fix
