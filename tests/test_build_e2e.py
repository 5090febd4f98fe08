"""Real BuildKit builds: the cpu image by the fast path, the content key, secrets, vendor stand-ins.

These need a Docker engine (bootstrapped by the docker_engine fixture) and the network to PyPI.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import build_recipe

from tools.core import labels
from tools.core.errors import UserError
from tools.stages import facts, patches, pylock
from tools.stages.plan import BuildOptions

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def cpu_image(tiny_cpu_image):
    return tiny_cpu_image


def test_cpu_image_imports_the_patched_files(cpu_image):
    ctx, image = cpu_image
    info = patches.stack_info("cpu")
    assert ctx.plan.install_mode == "wheel-overlay"
    # the engine in the image reports the stamped version: the overlay is what Python imports
    out = _docker("run", "--rm", "--network", "none", "--entrypoint", "python", image.ref, "-c",
                  "import vllm._flagos_stack as s, vllm.entrypoints.serve.instrumentator.basic as b, json;"
                  "print(json.dumps({'id': s.STACK_ID, 'file': b.__file__}))")
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts["id"] == info.short_id
    # every overlaid file in the image is byte-identical to the patched tree's
    patched = patches.patched_tree("cpu")
    site = "/opt/venv/lib/python3.11/site-packages/"
    for rel in sorted(p for p in info.touched if p.startswith("vllm/")):
        inside = _docker("run", "--rm", "--network", "none", "--entrypoint", "sha256sum", image.ref, site + rel)
        expected = subprocess.run(["sha256sum", str(patched / rel)], capture_output=True, text=True,
                                  check=True).stdout.split()[0]
        assert inside.split()[0] == expected, rel


def test_labels_carry_the_inputs(cpu_image):
    ctx, image = cpu_image
    found = json.loads(_docker("image", "inspect", "--format", "{{json .Config.Labels}}", image.image_id))
    info = patches.stack_info("cpu")
    assert found[labels.CONTENT_KEY] == ctx.content_key
    assert found[labels.STACK_HASH] == info.stack_hash
    assert found[labels.VLLM_VERSION] == "0.32.0"
    assert found[labels.VENDOR] == "cpu" and found[labels.RECIPE] == "tiny-cpu"
    assert found[labels.INSTALL_MODE] == "wheel-overlay"
    for key in (labels.SOURCE, labels.REVISION, labels.VERSION, labels.CREATED, labels.TITLE,
                labels.VLLM_COMMIT, labels.FLAGGEMS_VERSION, labels.LOCK_HASH):
        assert found.get(key), key


def test_labels_carry_the_facts_read_from_the_image(cpu_image):
    _, image = cpu_image
    found = json.loads(_docker("image", "inspect", "--format", "{{json .Config.Labels}}", image.image_id))
    asked = _docker("run", "--rm", "--network", "none", "--entrypoint", "python", image.image_id, "-c",
                    "import platform, torch; print(platform.python_version(), torch.__version__)")
    assert [found[labels.FACTS_PYTHON], found[labels.FACTS_TORCH]] == asked.split()[-2:]
    assert found[labels.FACTS_ENGINE] == "0.32.0"
    assert found[labels.FACTS_OS] == "Debian GNU/Linux 12 (bookworm)"
    # the installed set was checked against the lock before it was labelled: same names, same versions
    locked = pylock.load("cpu").names(multinode=False)
    assert found[labels.FACTS_LOCK] == "equal to locks/cpu.txt"
    assert found[labels.FACTS_PACKAGES] == str(len(locked))
    assert found[labels.FACTS_PACKAGES_SHA256] == facts.packages_digest(locked)


def test_two_no_cache_builds_install_the_same_packages(cpu_image):
    """No resolution at build time: two builds of the same inputs from no layer cache hold the same
    distributions at the same versions (read from each image), and that set is the lock's."""
    ctx, image = cpu_image
    built = []
    try:
        for _ in range(2):
            again_ctx, again = build_recipe("tiny-cpu", "cpu", BuildOptions(no_cache=True))
            assert again_ctx.content_key == ctx.content_key and not again.skipped
            built.append(again.image_id)
        first, second = (facts.load(i) for i in built)
        assert first is not None and second is not None and built[0] != built[1]
        assert first.distributions == second.distributions
        assert first.distributions == pylock.load("cpu").names(multinode=False)
    finally:
        # the session's image gets its tags back; the two rebuilt ones go, and so does the build cache they
        # left beyond 20 GB (two 4 GB layers a run: repeated runs filled a 100 GB disk)
        for ref in (image.ref, image.key_ref):
            subprocess.run(["docker", "tag", image.image_id, ref], check=True)
        subprocess.run(["docker", "rmi", *built], capture_output=True, check=False)
        subprocess.run(["docker", "builder", "prune", "-f", "--keep-storage", "20gb"], capture_output=True,
                       check=False)


def test_noop_rebuild_hits_the_content_key(cpu_image):
    ctx, image = cpu_image
    again_ctx, again = build_recipe("tiny-cpu", "cpu")
    assert again_ctx.content_key == ctx.content_key
    assert again.skipped and again.image_id == image.image_id


def test_secrets_never_land_in_the_image(cpu_image, tmp_path, build_dir):
    """A CA bundle and an index token are used by real pip steps, then searched for everywhere."""
    marker = "FLAGREL-SECRET-MARKER-7f3a9c"
    bundle = tmp_path / "ca.pem"
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle.write_text(f"# {marker}\n" + (system.read_text() if system.exists() else ""))
    token = "tok3n" + marker[-6:]
    options = BuildOptions(ca_bundle=bundle, index_url=f"https://flagrel:{token}@pypi.org/simple",
                           no_cache=True)
    try:
        ctx, image = build_recipe("tiny-cpu", "cpu", options)
    finally:
        # the shared tiny-cpu tag goes back to the image the other tests use
        subprocess.run(["docker", "tag", cpu_image[1].image_id, cpu_image[1].ref], check=True)
    assert not image.skipped
    history = _docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image.image_id)
    inspect = _docker("image", "inspect", image.image_id)
    for text in (history, inspect, image.log.read_text(), ctx.dockerfile.read_text()):
        assert marker not in text and token not in text
    # the whole image filesystem, layer by layer
    name = f"flagrel-secret-scan-{ctx.content_key[:8]}"
    subprocess.run(["docker", "create", "--name", name, image.image_id], check=True, capture_output=True)
    try:
        export = subprocess.Popen(["docker", "export", name], stdout=subprocess.PIPE)
        grep = subprocess.run(["grep", "-a", "-c", "-e", marker, "-e", token], stdin=export.stdout,
                              capture_output=True, text=True, check=False)
        export.wait()
        assert grep.stdout.strip() == "0", "a secret landed in the image filesystem"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(["docker", "rmi", "-f", image.image_id], capture_output=True, check=False)


@pytest.mark.parametrize(("vendor", "recipe"), [("nvidia", "robobrain2-7b-fp8dynamic-nvidia"),
                                                 ("ascend", "robobrain2-32b-ascend")])
def test_vendor_template_builds_on_a_stand_in_base(debian_base, build_dir, vendor, recipe, monkeypatch):
    """The nvidia/ascend templates on a local Debian stand-in for the CUDA/CANN base.

    Covers: the template renders, BuildKit accepts every instruction and mount, the context (wheelhouse,
    overlay/source, entrypoint) is complete, and the build runs until the first step that needs the real
    vendor base (Ubuntu's python3.12 packages / CANN's set_env.sh). It cannot cover CUDA, torch CUDA or
    torch-npu installs, vllm-ascend, or running on a GPU/NPU: those need the real base and hardware.
    """
    options = BuildOptions(base_image=debian_base, platforms=("linux/amd64",))
    # the vendor's disk estimate is for its real base; on the stand-in the build stops at the first vendor step
    monkeypatch.setenv("FLAGREL_BUILD_DISK_GB", "0")
    with pytest.raises(UserError) as info:
        build_recipe(recipe, vendor, options)
    message = info.value.render()
    # the failure is the first vendor-specific step, named, not a template or context error
    expected = {"nvidia": "apt-get install", "ascend": "set_env.sh"}[vendor]
    assert "image build failed at step" in message
    assert expected in message, message


_PYC_CHECK = '''
import importlib.util, json, os, sys
sys.dont_write_bytecode = True  # look at what the build left; write nothing
import vllm.entrypoints.openai.api_server
seen, missing, stale = 0, [], []
for module in list(sys.modules.values()):
    source = getattr(module, "__file__", None) or ""
    # the entrypoint module itself runs as __main__ (`python -m`), whose code Python never caches
    if not source.endswith(".py") or "/site-packages/" not in source or source.endswith("openai/api_server.py"):
        continue
    seen += 1
    try:
        with open(importlib.util.cache_from_source(source), "rb") as cached:
            head = cached.read(16)
    except OSError:
        missing.append(source)
        continue
    st = os.stat(source)
    if int.from_bytes(head[4:8], "little") == 0 and (  # a timestamp .pyc: valid for this mtime and size only
            int.from_bytes(head[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
            or int.from_bytes(head[12:16], "little") != st.st_size & 0xFFFFFFFF):
        stale.append(source)
print(json.dumps({"seen": seen, "missing": missing, "stale": stale}))
'''


def test_what_a_serve_imports_is_byte_compiled_in_the_image(cpu_image):
    """uv does not compile (it would compile every installed file); the front-door check writes the byte-code
    of what the engine imports. Every site-packages module the serving entrypoint loads has a valid .pyc."""
    _, image = cpu_image
    out = _docker("run", "--rm", "--network", "none", "--entrypoint", "python", image.image_id, "-c", _PYC_CHECK)
    found = json.loads(out.strip().splitlines()[-1])
    assert found["seen"] > 3000  # torch, transformers, fastapi, vllm, ...: the check looked at the real set
    assert found["missing"] == [] and found["stale"] == []
