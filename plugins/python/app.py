"""A buildpack written in Python: Python apps.

detect:  the app has requirements.txt, runtime.txt, pyproject.toml, Pipfile, app.py or main.py.
compile: when runtime.txt pins a version (`python-3.12.4`, or `python-3.12` for the newest
         3.12), installs that CPython from the buildpack's `[[dependencies]]` through the
         host's `fetch` (mirrors, allowlist, sha256 and cache are the platform's) into
         /app/.python and puts it on PATH with a .profile.d script; otherwise the stack's
         python3 runs the app. Buildpacks have no network, so packages are not pip-installed
         here: a `vendor/` directory of installed packages goes on PYTHONPATH.
release: `web: python3 app.py` (or main.py), PYTHONUNBUFFERED=1.

Built by build.sh with componentize-py, which bundles CPython and this module.
"""

import os
import tomllib

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.dea_buildpack_types import (
    Detection,
    Error_Denied,
    Error_Failed,
    Error_Io,
    Error_Unsupported,
    ReleaseInfo,
)

APP = "/app"
MANIFEST = "/buildpack/buildpack.toml"
MARKERS = ("requirements.txt", "runtime.txt", "pyproject.toml", "Pipfile", "app.py", "main.py")
RUNTIME_DIR = "/app/.python"


def app_path(name: str) -> str:
    return os.path.join(APP, name)


def pinned_version() -> str | None:
    """The version runtime.txt asks for (`python-3.12.4` -> `3.12.4`), if any."""
    try:
        with open(app_path("runtime.txt")) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Err(Error_Io(f"reading runtime.txt: {e}"))
    version = text.removeprefix("python-").strip()
    if not version or not all(part.isdigit() for part in version.split(".")):
        raise Err(Error_Failed(f"runtime.txt should say python-X.Y[.Z], not {text!r}"))
    return version


def offered_runtimes() -> list[dict]:
    try:
        with open(MANIFEST, "rb") as f:
            manifest = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise Err(Error_Io(f"reading buildpack.toml: {e}"))
    return [d for d in manifest.get("dependencies", []) if d.get("name") == "python"]


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def choose_runtime(wanted: str) -> dict:
    """The exact version, or the newest one whose version starts with `wanted.`."""
    runtimes = offered_runtimes()
    matching = [
        d for d in runtimes
        if d.get("version") == wanted or str(d.get("version", "")).startswith(wanted + ".")
    ]
    if not matching:
        offered = ", ".join(str(d.get("version")) for d in runtimes) or "none"
        raise Err(Error_Unsupported(f"Python {wanted} is not offered by this buildpack (offered: {offered})"))
    return max(matching, key=lambda d: version_key(str(d["version"])))


def entry_point() -> str | None:
    for name in ("app.py", "main.py"):
        if os.path.isfile(app_path(name)):
            return name
    return None


def install_runtime(runtime: dict) -> None:
    host.log(host.LogKind.STEP, f"Installing Python {runtime['version']}")
    request = host.FetchRequest(
        url=runtime["uri"],
        sha256=runtime.get("sha256"),
        destination=RUNTIME_DIR,
        unpack=int(runtime.get("strip_components", 0)),
    )
    try:
        fetched = host.fetch(request)
    except Err as e:
        # Every fetch-error case carries its message; a refusal stays a refusal.
        message = f"downloading Python {runtime['version']}: {e.value.value}"
        if isinstance(e.value, host.FetchError_Denied | host.FetchError_ChecksumMismatch):
            raise Err(Error_Denied(message))
        raise Err(Error_Failed(message))
    source = "the download cache" if fetched.cached else fetched.url_used
    host.log(host.LogKind.DETAIL, f"{fetched.size} bytes from {source}")
    os.makedirs(app_path(".profile.d"), exist_ok=True)
    with open(app_path(".profile.d/python.sh"), "w") as f:
        f.write('export PATH="$HOME/.python/bin:$PATH"\n')


class WitWorld(wit_world.WitWorld):
    def detect(self) -> Detection | None:
        if not any(os.path.exists(app_path(name)) for name in MARKERS):
            return None
        return Detection(name="python", version=pinned_version())

    def compile(self) -> None:
        wanted = pinned_version()
        if wanted is None:
            host.log(host.LogKind.STEP, "Using the stack's python3 (pin one with runtime.txt)")
        else:
            install_runtime(choose_runtime(wanted))
        if os.path.isfile(app_path("requirements.txt")) and not os.path.isdir(app_path("vendor")):
            host.log(
                host.LogKind.WARNING,
                "requirements.txt found but no vendor/: buildpacks cannot pip install, "
                "so install packages into vendor/ (pip install -t vendor -r requirements.txt) before pushing",
            )
        print(f"python app ready ({entry_point() or 'no app.py or main.py: give a Procfile'})")

    def release(self) -> ReleaseInfo:
        config_vars = [("PYTHONUNBUFFERED", "1")]
        if os.path.isdir(app_path("vendor")):
            config_vars.append(("PYTHONPATH", "/home/vcap/app/vendor"))
        entry = entry_point()
        processes = [("web", f"python3 {entry}")] if entry else []
        return ReleaseInfo(process_types=processes, config_vars=config_vars, addons=[])
