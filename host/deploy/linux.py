"""Install ``dflare-agent`` as a hardened systemd service on a Linux board (Raspberry Pi, Jetson...).

Run on the board itself (``sudo dflare deploy linux``), after ``pip install`` (docs/raspberry-pi.md):
it writes a fresh random token to a root-only file, renders ``dflare-agent.service`` (package data) with
this installation's ``dflare-agent`` path, and enables the service. The unit runs the agent as a
``DynamicUser`` that receives the token through ``LoadCredential`` and can write only its cache.
``--root DIR`` stages the files under DIR instead (for images, and for tests); nothing is started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from host.errors import ConfigError, DeployError

UNIT_NAME = "dflare-agent.service"
#: The unit template, shipped inside the package (so a wheel installed on a board has it too).
UNIT_TEMPLATE: Traversable = resources.files("host.deploy") / UNIT_NAME
#: The board guide, linked from the unit's Documentation= when this is a source checkout that has it.
_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "raspberry-pi.md"
DEFAULT_TOKEN_FILE = "/etc/dflare-agent/token"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
#: The agent's default port (DESIGN.md: ``dflare-agent serve --port 50051``).
DEFAULT_PORT = 50051
#: How long ``systemctl`` may take to reload and start the unit.
SYSTEMCTL_TIMEOUT_S = 60.0


@dataclass
class LinuxInstall:
    """What ``install`` wrote (paths as they will be on the board)."""

    unit_path: Path
    token_path: Path
    token: str
    started: bool


def find_agent_executable() -> str:
    """The ``dflare-agent`` script of this installation (next to this interpreter, else on PATH).

    Raises:
        ConfigError: none found.
    """
    beside = Path(sys.executable).with_name("dflare-agent")
    if beside.exists():
        return str(beside)
    found = shutil.which("dflare-agent")
    if found:
        return found
    raise ConfigError("dflare-agent is not installed here: pip install dflare-edge on the board first "
                      "(docs/raspberry-pi.md), or pass --agent PATH")


def render_unit(agent: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                token_file: str = DEFAULT_TOKEN_FILE, extra_args: tuple[str, ...] = (),
                template: Traversable | Path = UNIT_TEMPLATE) -> str:
    """Fill the unit template.

    Raises:
        ConfigError: a relative path, or a value systemd would split or misread.
    """
    for name, value in (("agent", agent), ("token file", token_file)):
        if not os.path.isabs(value) or any(c.isspace() for c in value):
            raise ConfigError(f"{name} must be an absolute path without spaces, got {value!r}")
    if not 0 < port < 65536:
        raise ConfigError(f"port must be 1..65535, got {port}")
    extra = "".join(f" {a}" for a in extra_args)
    if any(c in extra for c in "\n%$"):
        raise ConfigError(f"extra agent arguments may not contain newlines, % or $: {extra_args!r}")
    text = template.read_text(encoding="utf-8")
    if _GUIDE.is_file():
        text = text.replace("@@DOCS@@", str(_GUIDE))
    else:  # installed from a wheel: no local copy of the guide to point at
        text = "".join(line for line in text.splitlines(keepends=True) if "@@DOCS@@" not in line)
    for key, value in (("@@AGENT@@", agent), ("@@HOST@@", host), ("@@PORT@@", str(port)),
                       ("@@TOKEN_FILE@@", token_file), ("@@EXTRA_ARGS@@", extra)):
        text = text.replace(key, value)
    return text


def install(root: str | Path = "/", agent: str | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
            token_file: str = DEFAULT_TOKEN_FILE, extra_args: tuple[str, ...] = (), start: bool = True,
            rotate_token: bool = False) -> LinuxInstall:
    """Write the token (0600, kept unless ``rotate_token``) and the unit; enable + start it when root is "/".

    Raises:
        ConfigError: bad arguments.
        DeployError: cannot write the files (run with sudo), or systemctl failed.
    """
    root = Path(root)
    agent = agent or find_agent_executable()
    unit_text = render_unit(agent, host, port, token_file, extra_args)
    token_path = root / token_file.lstrip("/")
    unit_path = root / DEFAULT_UNIT_DIR.lstrip("/") / UNIT_NAME
    try:
        token_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if rotate_token or not token_path.exists():
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        os.chmod(token_path, 0o600)
        token = token_path.read_text().strip()
        unit_path.parent.mkdir(parents=True, exist_ok=True)
        unit_path.write_text(unit_text)
    except PermissionError as exc:
        raise DeployError(f"cannot write {exc.filename}: run `sudo dflare deploy linux` (or pass --root DIR "
                          "to stage the files elsewhere)") from None
    started = False
    if start and root.resolve() == Path("/"):
        for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT_NAME],
                    ["systemctl", "restart", UNIT_NAME]):
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S)
            if result.returncode != 0:
                raise DeployError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()[-500:]}; "
                                  f"see `journalctl -u {UNIT_NAME}`")
        started = True
    return LinuxInstall(unit_path, token_path, token, started)


def verify_unit(unit_path: str | Path) -> tuple[bool, str]:
    """Run ``systemd-analyze verify`` on a unit file; returns (clean, its output).

    Clean means exit status 0 and no warning about the file (systemd warns and carries on about
    unknown keys, which is exactly what a verify must catch).

    Raises:
        ConfigError: systemd-analyze is not installed.
    """
    exe = shutil.which("systemd-analyze")
    if exe is None:
        raise ConfigError("systemd-analyze is not installed (apt-get install systemd)")
    unit_path = Path(unit_path)
    result = subprocess.run([exe, "verify", str(unit_path)], capture_output=True, text=True,
                            timeout=SYSTEMCTL_TIMEOUT_S)
    output = (result.stdout + result.stderr).strip()
    about_unit = [line for line in output.splitlines() if unit_path.name in line]
    return result.returncode == 0 and not about_unit, output
