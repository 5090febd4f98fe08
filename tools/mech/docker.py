"""Every call to Docker goes through here: the docker CLI (buildx included), nothing of this project's.

Containers cannot leak: started through the docker CLI, removed when the `with` block ends.

Cleanup is structural: the container gets a unique name *before* `docker run` is called, and the
context manager removes that name on every exit path (normal end, exception, Ctrl-C, even a Ctrl-C
while `docker run` itself is still running). Callers never have to remember to clean up.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.core.errors import UserError
from tools.mech import console
from tools.mech.console import RunResult

# Every container this module starts carries this label, so leftovers (a killed process) can be found.
OWNER_LABEL = "io.flagrelease.owner=tools.container"


class ImageNotFound(UserError):
    pass


def call(args: Sequence[str], *, timeout: float | None = 60, check: bool = True, env: Mapping[str, str] | None = None,
         input: str | None = None) -> subprocess.CompletedProcess:
    """One docker CLI call, output captured. A missing CLI or engine is one clear error; a timeout raises
    subprocess.TimeoutExpired for the caller to classify."""
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False,
                              env=dict(env) if env is not None else None, input=input)
    except FileNotFoundError as exc:
        raise UserError("the docker CLI is not installed", fix="install docker (the client and an engine)") from exc
    if proc.returncode != 0 and "Cannot connect to the Docker daemon" in proc.stderr:
        # otherwise an image lookup would read as "image not found"
        raise UserError("no Docker engine answers", where=proc.stderr.strip().splitlines()[-1],
                        fix="start the engine (dockerd), or run a build session, which starts one on Debian")
    if check and proc.returncode != 0:
        raise UserError(f"docker {args[0]} failed: {proc.stderr.strip() or f'exit {proc.returncode}'}",
                        where="docker " + " ".join(args[:3]))
    return proc


# A busy engine (exporting a multi-GB build, say) can take minutes to remove a container; giving up
# sooner would leave it behind.
REMOVE_TIMEOUT_S = 300


def _shielded(args: Sequence[str], timeout: float = 60) -> int:
    """Run a docker command that must finish even if the user presses Ctrl-C meanwhile.

    The child gets its own session, so the terminal's SIGINT does not reach it; we keep waiting through
    KeyboardInterrupt and re-raise it once the command is done.
    """
    interrupted = False
    proc = subprocess.Popen(["docker", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while True:
        try:
            code = proc.wait(timeout=timeout)
            break
        except KeyboardInterrupt:
            interrupted = True
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            break
    if interrupted:
        raise KeyboardInterrupt
    return code


def remove_container(name: str) -> None:
    """`docker rm -f -v NAME`, through Ctrl-C; if the engine did not manage it, say so and how to finish."""
    code = _shielded(["rm", "-f", "-v", name], timeout=REMOVE_TIMEOUT_S)
    if code != 0 and call(["container", "inspect", name], check=False).returncode == 0:
        sys.stderr.write(f"warning: container {name} could not be removed (docker rm exit {code}); "
                         f"remove it with: docker rm -f {name}\n")


@dataclass(frozen=True)
class State:
    status: str  # created, running, exited, dead, ... or "missing"
    running: bool
    exit_code: int | None
    oom_killed: bool = False
    error: str = ""


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    id: str

    def state(self) -> State:
        proc = call(["container", "inspect", "--format", "{{json .State}}", self.name], check=False)
        if proc.returncode != 0:
            return State("missing", False, None)
        data = json.loads(proc.stdout)
        running = bool(data.get("Running"))
        return State(
            status=str(data.get("Status", "")),
            running=running,
            exit_code=None if running else int(data.get("ExitCode", 0)),
            oom_killed=bool(data.get("OOMKilled")),
            error=str(data.get("Error", "")),
        )

    def is_running(self) -> bool:
        return self.state().running

    def exit_code(self) -> int | None:
        """None while it runs (or if it is gone)."""
        return self.state().exit_code

    def logs(self, tail: int | None = None) -> str:
        """stdout and stderr in one text, in the order the daemon sends them (one pipe for both, so the
        CLI cannot regroup them). Lines written to the two streams within a few ms may still swap: the
        engine copies each stream separately into its log."""
        args = ["docker", "logs"] + (["--tail", str(tail)] if tail is not None else []) + [self.name]
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, timeout=120)
        return proc.stdout.decode(errors="replace")

    def log_tail(self, lines: int = 30) -> list[str]:
        return self.logs(tail=lines).splitlines()[-lines:]

    def save_logs(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            subprocess.run(["docker", "logs", self.name], stdout=out, stderr=subprocess.STDOUT, check=False,
                           timeout=300)
        return path

    def _exec_args(self, argv: Sequence[str], env: Mapping[str, str] | None, workdir: str | None) -> list[str]:
        opts = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
        if workdir is not None:
            opts += ["--workdir", workdir]
        return ["exec", *opts, self.name, *argv]

    def exec(self, argv: Sequence[str], *, timeout: float = 60, env: Mapping[str, str] | None = None,
             workdir: str | None = None) -> subprocess.CompletedProcess:
        """`docker exec [-e K=V ...] NAME ARGV`, output captured, never raising on a non-zero exit."""
        return call(self._exec_args(argv, env, workdir), check=False, timeout=timeout)

    def exec_logged(self, argv: Sequence[str], log: Path, *, timeout: float = 120,
                    env: Mapping[str, str] | None = None) -> int:
        """`docker exec NAME ARGV` in the foreground, its command line and output appended to LOG."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"$ {shlex.join(argv)}\n".encode())
            out.flush()
            try:
                return subprocess.run(["docker", *self._exec_args(argv, env, None)], stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
                                      timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                out.write(f"(still running after {timeout:.0f}s: given up)\n".encode())
                return 124

    def exec_background(self, argv: Sequence[str], log: Path, *,
                        env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """`docker exec NAME ARGV` left running, its command line and output appended to LOG on the host.

        The client runs in its own session (the terminal's Ctrl-C reaches only us); it ends when the
        process ends or the container is removed. Callers reap it with stop_client()."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"$ {shlex.join(argv)}\n".encode())
            out.flush()
            return subprocess.Popen(["docker", *self._exec_args(argv, env, None)], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def copy_out(self, src: str, dest: Path) -> bool:
        """`docker cp NAME:SRC DEST` (a file or a folder); False when SRC is not there."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        return call(["cp", f"{self.name}:{src}", str(dest)], check=False, timeout=120).returncode == 0

    def pid(self) -> int:
        """The host pid of the container's first process (0 when it is not running)."""
        proc = call(["container", "inspect", "--format", "{{.State.Pid}}", self.name], check=False)
        return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0

    def remove(self) -> None:
        remove_container(self.name)


def stop_client(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Reap a docker client started by exec_background: wait for it (its container is gone or going),
    then kill it."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def memory_usage(names: Sequence[str]) -> dict[str, str]:
    """Each running container's memory use now, as `docker stats --no-stream` prints it (e.g. 2.9GiB)."""
    if not names:
        return {}
    proc = call(["stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *names], check=False, timeout=120)
    usage = {}
    for line in proc.stdout.splitlines():
        name, _, mem = line.partition("\t")
        if name in names:
            usage[name] = mem.split("/")[0].strip()
    return usage


def _unique_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def running_container(
    image: str,
    argv: Sequence[str] = (),
    *,
    name_prefix: str,
    flags: Sequence[str] = (),
    mounts: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    entrypoint: str | None = None,
    network: str = "host",
) -> Iterator[Container]:
    """`docker run -d` the image; the container is removed (`docker rm -f`) whatever happens.

    argv follows the image name (the CMD); `entrypoint` replaces the image's ENTRYPOINT when given.
    mounts are `-v` specs, env is passed as `-e KEY=VALUE`. No --rm: an engine that crashes must keep
    its logs until we have read them.
    """
    name = _unique_name(name_prefix)
    cmd = ["run", "-d", "--name", name, "--label", OWNER_LABEL, "--network", network, *flags]
    for mount in mounts:
        cmd += ["-v", mount]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    cmd += [image, *argv]
    # The name is fixed before `docker run`: a Ctrl-C during it still leaves `name` for the finally below.
    try:
        proc = call(cmd, check=False, timeout=300)
        if proc.returncode != 0:
            raise UserError(f"docker run {image} failed: {proc.stderr.strip()}",
                            where=f"container {name}",
                            fix="check the image exists locally (docker image ls) and the flags are valid")
        yield Container(name=name, image=image, id=proc.stdout.strip())
    finally:
        remove_container(name)


def image_exists(ref: str) -> bool:
    return call(["image", "inspect", "--format", "{{.Id}}", ref], check=False).returncode == 0


def _inspect(ref: str, template: str) -> str:
    proc = call(["image", "inspect", "--format", template, ref], check=False)
    if proc.returncode != 0:
        raise ImageNotFound(f"image {ref} is not in the local Docker engine", where=ref,
                            fix="build it first (nox -s build-cpu -- RECIPE) or name another with --image")
    return proc.stdout.strip()


def inspect_image(ref: str) -> dict:
    """Everything the engine knows of a local image (docker image inspect), in one call."""
    return json.loads(_inspect(ref, "{{json .}}"))


def image_facts(ref: str) -> tuple[str, dict[str, str]]:
    """The sha256:... id (content address of the image config) and the labels."""
    data = inspect_image(ref)
    return data["Id"], dict((data.get("Config") or {}).get("Labels") or {})


def image_id(ref: str) -> str:
    return image_facts(ref)[0]


def image_labels(ref: str) -> dict[str, str]:
    return image_facts(ref)[1]


def leftover_containers(name_prefix: str) -> list[str]:
    """Names of containers (any state) that running_container(name_prefix=PREFIX) or PREFIX-nodeN made: tests
    assert none remain. Exact: the prefix of recipe tiny-cpu does not match containers of tiny-cpu-2node."""
    proc = call(["ps", "-a", "--filter", f"name=^/?{name_prefix}", "--format", "{{.Names}}"], check=False)
    mine = re.compile(re.escape(name_prefix) + r"(-node[0-9]+)?-[0-9a-f]{8}")
    return [n for n in proc.stdout.split() if mine.fullmatch(n)]


def _quiet(args: Sequence[str], timeout: float = 20) -> str | None:
    """stdout of a docker call that may fail for want of a CLI or an engine; None then."""
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def engine_version() -> str | None:
    return _quiet(["version", "--format", "{{.Server.Version}}"])


def buildx_version() -> str | None:
    return _quiet(["buildx", "version"])


def version_info() -> dict:
    """`docker version` as data (client and server); empty when no engine answers."""
    raw = _quiet(["version", "--format", "{{json .}}"], timeout=30)
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}


def images_with_label(*labels: str) -> list[str]:
    """Ids of local images carrying every label given (KEY=VALUE, or KEY for any value)."""
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    proc = call(["images", "--no-trunc", "--quiet", *filters], check=False)
    return [line for line in proc.stdout.split() if line]


def tag(image: str, ref: str) -> None:
    call(["tag", image, ref])


def relabel(image: str, labels: Mapping[str, str], tags: Sequence[str]) -> str:
    """IMAGE with LABELS added, under TAGS; returns the new image's id. BuildKit writes only a new config
    (no layer, no container), so this takes seconds; IMAGE itself is left as it was."""
    with tempfile.TemporaryDirectory(prefix="flagrel-relabel-") as tmp:
        folder = Path(tmp)
        (folder / "Dockerfile").write_text(f"FROM {image}\n")
        iid = folder / "iid"
        args = ["buildx", "build", "--quiet", "--iidfile", str(iid)]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        for ref in tags:
            args += ["-t", ref]
        proc = call([*args, str(folder)], timeout=600, check=False)
        if proc.returncode != 0:
            raise UserError(f"adding labels to {image} failed: {proc.stderr.strip()[-800:]}", where=image,
                            fix="check the Docker engine (docker buildx ls)")
        return iid.read_text().strip()


def remove_image(image: str) -> None:
    """Best effort: an image still in use stays (its layers are shared with the image that replaced it)."""
    call(["rmi", image], check=False, timeout=120)


def import_image(tarball: Path, ref: str) -> None:
    """docker import a root filesystem tarball as image REF."""
    with tarball.open("rb") as data:
        proc = subprocess.run(["docker", "import", "-", ref], stdin=data, capture_output=True, text=True,
                              check=False)
    if proc.returncode != 0:
        raise UserError(f"docker import {ref} failed: {proc.stderr.strip()}", where=str(tarball))


def buildx_build(args: Sequence[str], log: Path, *, title: str, env: Mapping[str, str]) -> RunResult:
    """`docker buildx build ARGS` with every line in the log and the latest one live."""
    return console.run_logged(["docker", "buildx", "build", *args], log, title=title, env=dict(env))


def run_attached(args: Sequence[str], *, name: str, log: Path, title: str) -> RunResult:
    """`docker ARGS`, a `run --name NAME ...` in the foreground, logged; container NAME is removed whatever
    happens."""
    try:
        return console.run_logged(["docker", *args], log, title=title)
    finally:
        remove_container(name)
