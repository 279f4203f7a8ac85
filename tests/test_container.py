"""The container image, without a Docker engine: `make lint` runs hadolint on the Dockerfile; here
its builder stage is replayed into a temporary directory and the final stage's ENTRYPOINT, CMD,
ENV and HEALTHCHECK are run from the virtual environment that replay produced."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import aiohttp
import pytest

from proxy import __version__
from proxy.servers import RunningSimulator

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
# PATH inside the official python image, which the Dockerfile's `$PATH` expands to.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_VENV = "/opt/venv"
# What .dockerignore must keep out of the build context, and the replay leaves out too.
NOT_IN_CONTEXT = shutil.ignore_patterns("__pycache__", "*.py[cod]")


@dataclass
class Stage:
    """One FROM ... section of the Dockerfile, as instructions in order."""

    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]

    def env(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The environment after this stage's ENV lines, `$NAME` expanded as Docker does."""
        env = dict(inherited)
        for arguments in self.all("ENV"):
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                env[name] = re.sub(
                    r"\$\{?(\w+)\}?", lambda match: env.get(match.group(1), ""), value
                )
        return env


def parse_stages(text: str) -> list[Stage]:
    """Comment lines dropped, continuation lines joined, instructions grouped by FROM."""
    stages: list[Stage] = []
    pending = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        pending = ""
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            stages.append(Stage(arguments.split()[-1]))
        else:
            stages[-1].instructions.append((keyword, arguments))
    return stages


def exec_form(arguments: str) -> list[str]:
    """A JSON-array instruction; the shell form would put /bin/sh between Docker and the proxy."""
    assert arguments.startswith("["), f"not exec form: {arguments}"
    command = json.loads(arguments)
    assert isinstance(command, list)
    return [str(part) for part in command]


@dataclass(frozen=True)
class Image:
    builder: Stage
    final: Stage

    @property
    def command(self) -> list[str]:
        return exec_form(self.final.last("ENTRYPOINT")) + exec_form(self.final.last("CMD"))

    @property
    def healthcheck(self) -> list[str]:
        options, _, command = self.final.last("HEALTHCHECK").partition("CMD ")
        assert "--timeout=" in options
        return exec_form(command.strip())


@pytest.fixture(scope="module")
def image() -> Image:
    stages = parse_stages(DOCKERFILE.read_text(encoding="utf-8"))
    return Image(builder=next(s for s in stages if s.name == "builder"), final=stages[-1])


@dataclass(frozen=True)
class BuiltVenv:
    """The image's /opt/venv, rebuilt under a temporary directory by the builder's own steps."""

    venv: Path
    wheel: Path
    workdir: Path  # the image's working directory: not the source tree
    env: dict[str, str]  # the final stage's ENV, /opt/venv moved to `venv`


def rebased(text: str, root: Path, *image_paths: str) -> str:
    for image_path in image_paths:
        text = text.replace(image_path, f"{root}{image_path}")
    return text


def replay_copy(arguments: str, workdir: Path, ignored: list[str]) -> None:
    """`COPY src... dest` from the repository: a directory's contents, a file by its name."""
    *sources, destination = shlex.split(arguments)
    target = workdir / destination
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        assert not any(fnmatch(source.rstrip("/"), rule) for rule in ignored), source
        path = REPO / source
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True, ignore=NOT_IN_CONTEXT)
        else:
            shutil.copy2(path, target / path.name)


@pytest.fixture(scope="module")
def built(image: Image, tmp_path_factory: pytest.TempPathFactory) -> BuiltVenv:
    root = tmp_path_factory.mktemp("image")
    workdir_in_image = image.builder.last("WORKDIR")
    workdir = Path(rebased(workdir_in_image, root, workdir_in_image))
    dockerignore = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignored = [rule for rule in dockerignore if rule and not rule.startswith("#")]
    for arguments in image.builder.all("COPY"):
        replay_copy(arguments, workdir, ignored)
    # `python` is this interpreter, as /usr/local/bin/python is the image's; pip keeps the
    # host's index settings, as Docker keeps the build host's network.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    build_env = image.builder.env({**os.environ, "PATH": path})
    for command in image.builder.all("RUN"):
        result = subprocess.run(
            ["/bin/sh", "-c", rebased(command, root, workdir_in_image, IMAGE_VENV)],
            cwd=workdir,
            env=build_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, f"RUN {command}\n{result.stdout}{result.stderr}"
    venv = Path(rebased(IMAGE_VENV, root, IMAGE_VENV))
    env = image.final.env({"PATH": BASE_IMAGE_PATH})
    env = {name: rebased(value, root, IMAGE_VENV) for name, value in env.items()}
    run_dir = root / "run"
    run_dir.mkdir()
    (wheel,) = workdir.glob("dist/*.whl")
    return BuiltVenv(venv, wheel, run_dir, env)


def test_final_stage_copies_only_the_virtual_environment(image: Image) -> None:
    assert image.final.all("COPY") == [f"--from=builder {IMAGE_VENV} {IMAGE_VENV}"]
    for command in image.final.all("RUN"):
        assert not re.search(r"\b(pip|apt-get|apt|gcc|make)\b", command), command


def test_image_runs_as_a_fixed_non_root_user(image: Image) -> None:
    created = re.findall(r"useradd .*--uid (\d+)", " ".join(image.final.all("RUN")))
    user = image.final.last("USER")
    assert created == [user.partition(":")[0]]
    assert int(created[0]) >= 1000


def test_wheel_ships_the_environment_table(built: BuiltVenv) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        packaged = wheel.read("proxy/environments.toml")
    assert packaged == (REPO / "config" / "environments.toml").read_bytes()


def test_proxy_is_imported_from_the_virtual_environment(built: BuiltVenv) -> None:
    result = subprocess.run(
        ["python", "-c", "import proxy; print(proxy.__file__)"],
        cwd=built.workdir,
        env=built.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(result.stdout.strip()).is_relative_to(built.venv)


def test_entrypoint_prints_the_version(image: Image, built: BuiltVenv) -> None:
    entrypoint = exec_form(image.final.last("ENTRYPOINT"))
    executable = shutil.which(entrypoint[0], path=built.env["PATH"])
    assert executable is not None
    assert Path(executable).is_relative_to(built.venv)
    result = subprocess.run(
        [*entrypoint, "--version"],
        cwd=built.workdir,
        env=built.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"agentsync-proxy {__version__}"


def secret_file(built: BuiltVenv, secret: str) -> Path:
    """A mounted secret, as /run/secrets/... would be; readable by its owner only."""
    path = built.workdir / "agentsync_client_secret"
    path.write_text(secret + "\n", encoding="utf-8")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


@asynccontextmanager
async def started(
    command: list[str], built: BuiltVenv, env: Mapping[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=built.workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


async def until_ready(process: asyncio.subprocess.Process, url: str) -> None:
    async with asyncio.timeout(20), aiohttp.ClientSession() as session:
        while process.returncode is None:
            try:
                async with session.get(url + "/-/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    _, err = await process.communicate()
    raise AssertionError(f"exited {process.returncode} before ready:\n{err.decode()}")


async def run(command: list[str], built: BuiltVenv, env: Mapping[str, str]) -> tuple[int, str]:
    """The exit status and the standard error of a command run as the container would."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=built.workdir,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_entrypoint_serves_passes_its_healthcheck_and_exits_0_on_sigterm(
    image: Image,
    built: BuiltVenv,
    agentsync_simulator: RunningSimulator,
    unused_tcp_port: int,
) -> None:
    simulator = agentsync_simulator
    assert built.env["AGENTSYNC_PROXY_LISTEN"] == "0.0.0.0:8080"
    env = {
        **built.env,
        "AGENTSYNC_PROXY_LISTEN": f"0.0.0.0:{unused_tcp_port}",
        "AGENTSYNC_PROXY_ALLOWED_CLIENTS": "127.0.0.0/8",
        "AGENTSYNC_CLIENT_ID": simulator.config.client_id,
        "AGENTSYNC_CLIENT_SECRET_FILE": str(secret_file(built, simulator.config.client_secret)),
        "AGENTSYNC_TOKEN_URL": simulator.token_url,
        "AGENTSYNC_API_BASE_URL": simulator.url,
    }
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with started(image.command, built, env) as proxy:
        await until_ready(proxy, url)
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/v2/entities/17345829") as response,
        ):
            assert response.status == 200
        status, problem = await run(image.healthcheck, built, env)
        assert status == 0, problem
        proxy.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proxy.communicate(), 30)
        assert proxy.returncode == 0, err.decode()
    status, problem = await run(image.healthcheck, built, env)
    assert status != 0 and "Connection refused" in problem  # it does notice a dead proxy
    records = [json.loads(line) for line in err.decode().splitlines()]
    assert records[0]["event"] == "listening"
    assert simulator.config.client_secret not in err.decode()


async def test_image_defaults_refuse_to_start_without_allowed_clients(
    image: Image, built: BuiltVenv
) -> None:
    env = {
        **built.env,
        "AGENTSYNC_CLIENT_ID": "my-client-id",
        "AGENTSYNC_CLIENT_SECRET_FILE": str(secret_file(built, "my-client-secret")),
    }
    async with started(image.command, built, env) as proxy:
        _, err = await asyncio.wait_for(proxy.communicate(), 20)
    assert proxy.returncode == 2
    (line,) = err.decode().splitlines()
    assert line.startswith("agentsync-proxy: --listen 0.0.0.0:8080: not a loopback address")
    assert "--allowed-clients" in line
