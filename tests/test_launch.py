"""Launchers: the commands each one runs (argument lists), the addresses it picks, the cluster check."""

from __future__ import annotations

import json
import os
import socket

import pytest
import yaml

from tools.core.errors import UserError
from tools.core.recipe import Recipe, load_recipe, recipe_path
from tools.stages import launch
from tools.stages.smoke_checks import check_cluster


def _recipe(name: str, **serve: object) -> Recipe:
    data = yaml.safe_load(recipe_path(name).read_text())
    data["serve"] = {**data["serve"], **serve}
    return Recipe.model_validate(data)


def test_each_recipe_picks_its_launcher_and_address() -> None:
    tiny, _ = load_recipe("tiny-cpu")
    fs, _ = load_recipe("tiny-cpu-flagscale")
    two, _ = load_recipe("tiny-cpu-2node")
    assert (launch.launcher_of(tiny), launch.serve_host(tiny)) == ("engine", "127.0.0.1")
    assert (launch.launcher_of(fs), launch.serve_host(fs)) == ("flagscale", "127.0.0.1")
    assert (launch.launcher_of(two), launch.serve_host(two)) == ("ray-cluster", "127.0.0.2")
    assert launch.node_ips(two) == ["127.0.0.2", "127.0.0.3"]
    # a multi-node FlagScale release is smoked as a Ray cluster of loopback nodes too
    ernie, _ = load_recipe("ernie-4.5-300b-a47b-nvidia")
    assert launch.launcher_of(ernie) == "ray-cluster" and launch.node_ips(ernie) == ["127.0.0.2", "127.0.0.3"]


def test_nodes_off_loopback_are_refused() -> None:
    recipe = _recipe("tiny-cpu-2node", hosts=["10.0.0.1", "127.0.0.3"])
    with pytest.raises(UserError) as err:
        launch.node_ips(recipe)
    assert "10.0.0.1" in err.value.what and err.value.where == "serve.hosts"


def test_flagscale_serves_the_baked_config_and_overrides_only_what_it_must() -> None:
    fs, _ = load_recipe("tiny-cpu-flagscale")
    assert launch.flagscale_argv(fs, "127.0.0.1", fs.serve.port) == ["flagscale", "serve", "tiny_cpu_flagscale"]
    # a busy port: FlagScale's own --port
    assert launch.flagscale_argv(fs, "127.0.0.1", 18123)[3:] == ["--port", "18123"]
    # a release baked for 0.0.0.0 (as the notes serve) still listens on loopback in the smoke
    wide = _recipe("tiny-cpu-flagscale", host="0.0.0.0")
    host = launch.serve_host(wide)
    argv = launch.flagscale_argv(wide, host, wide.serve.port)
    assert host == "127.0.0.1" and argv[3] == "--engine-args" and json.loads(argv[4]) == {"host": "127.0.0.1"}


def test_ray_start_is_flagscales_plus_the_node_address() -> None:
    two, _ = load_recipe("tiny-cpu-2node")
    head = launch.ray_start_argv(two, 0, "127.0.0.2", "127.0.0.2", 6390)
    worker = launch.ray_start_argv(two, 1, "127.0.0.3", "127.0.0.2", 6390)
    assert head[:4] == ["ray", "start", "--head", "--port=6390"]
    assert "--node-ip-address=127.0.0.2" in head and "--num-cpus=1" in head
    assert "--dashboard-host=127.0.0.2" in head
    assert worker[:3] == ["ray", "start", "--address=127.0.0.2:6390"]
    assert "--node-ip-address=127.0.0.3" in worker and "--num-cpus=1" in worker
    gpu = launch.ray_start_argv(_recipe("tiny-cpu-2node", device_type="gpu", nproc_per_node=1), 1, "127.0.0.3",
                                "127.0.0.2", 1)
    assert "--num-gpus=1" in gpu and not any(a.startswith("--num-cpus") for a in gpu)
    env = launch.node_env(two, "127.0.0.3")
    assert env["VLLM_HOST_IP"] == "127.0.0.3" and env["GLOO_SOCKET_IFNAME"] == "lo"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_free_port_is_on_the_given_loopback_address() -> None:
    port = launch.free_port("127.0.0.2")
    assert launch.port_free("127.0.0.2", port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.2", port))
        busy.listen()
        assert not launch.port_free("127.0.0.2", port)


def _facts(*workers: tuple[str, str], nodes=(("127.0.0.2", True), ("127.0.0.3", True))) -> dict:
    return {"nodes": [{"ip": ip, "alive": alive, "cpus": 1.0} for ip, alive in nodes],
            "actors": [{"class": "RayWorkerProc", "name": name, "state": "ALIVE", "ip": ip} for ip, name in workers]}


IPS = ["127.0.0.2", "127.0.0.3"]


def test_cluster_check_wants_every_node_alive_with_its_workers() -> None:
    good = _facts(("127.0.0.2", "vllm_Worker_PP0"), ("127.0.0.3", "vllm_Worker_PP1"))
    check, by_ip = check_cluster(lambda: good, IPS, 1)
    assert check.passed, check.detail
    assert by_ip["127.0.0.3"] == {"alive": True, "cpus": 1.0, "workers": ["vllm_Worker_PP1"]}
    # both stages on one node: not what the release says
    lopsided = _facts(("127.0.0.2", "a"), ("127.0.0.2", "b"))
    assert not check_cluster(lambda: lopsided, IPS, 1)[0].passed
    dead = _facts(("127.0.0.2", "a"), ("127.0.0.3", "b"), nodes=(("127.0.0.2", True), ("127.0.0.3", False)))
    check, _ = check_cluster(lambda: dead, IPS, 1)
    assert not check.passed and "127.0.0.3 NOT ALIVE" in check.detail
    stranger = _facts(("127.0.0.2", "a"), ("127.0.0.3", "b"),
                      nodes=(("127.0.0.2", True), ("127.0.0.3", True), ("172.17.0.1", True)))
    check, _ = check_cluster(lambda: stranger, IPS, 1)
    assert not check.passed and "172.17.0.1" in check.detail


def test_cluster_check_fails_when_ray_cannot_be_asked() -> None:
    def broken() -> dict:
        raise RuntimeError("no answer from Ray on node 0")

    check, facts = check_cluster(broken, IPS, 1)
    assert not check.passed and "no answer from Ray" in check.detail and facts == {}


def test_listeners_are_read_from_proc_in_both_families(tmp_path) -> None:
    from tools.mech import netns

    # this process's own namespace: a listener we open shows up with its address and port
    with socket.socket() as sock:
        sock.bind(("127.0.0.3", 0))
        sock.listen()
        port = sock.getsockname()[1]
        found = netns.listening(os.getpid())
    assert netns.Listener("127.0.0.3", port) in found
    assert "lo" in netns.interfaces(os.getpid())
    assert netns.call_in(os.getpid(), lambda x: x + 1, 41) == 42


def test_isolation_check_wants_lo_only_and_no_other_address() -> None:
    from tools.stages.smoke_checks import check_isolation

    ok = check_isolation({"interfaces": ["lo"], "listeners": ["0.0.0.0:6379", ":::8", "127.0.0.2:9010",
                                                               "::ffff:127.0.0.2:10001"]})
    assert ok.passed and "2 of them on a wildcard" in ok.detail
    assert not check_isolation({"interfaces": ["lo", "eth0"], "listeners": []}).passed
    stray = check_isolation({"interfaces": ["lo"], "listeners": ["10.1.2.3:80"]})
    assert not stray.passed and "10.1.2.3:80" in stray.detail
