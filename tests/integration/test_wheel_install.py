"""The package as a board gets it: a wheel installed outside the source tree still runs `dflare deploy linux`.

The wheel is built from this checkout and installed (without dependencies: the test venv has them)
into a fresh directory that is the only copy of ``host`` on the path; the command then runs from an
unrelated working directory, so nothing can be read from the source checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{build.stderr[-2000:]}")
    wheels = list((work / "dist").glob("dflare_edge-*.whl"))
    assert len(wheels) == 1, wheels
    site = work / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheels[0])], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    return site


def _python(site: Path, cwd: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_deploy_linux_renders_the_unit_from_an_installed_wheel(installed, tmp_path):
    root = tmp_path / "board"
    proc = _python(installed, tmp_path, (
        "import sys, host\n"
        f"assert host.__file__.startswith({str(installed)!r}), host.__file__\n"
        "from host.cli import main\n"
        f"sys.exit(main(['deploy', 'linux', '--root', {str(root)!r}, '--agent', '/usr/local/bin/dflare-agent']))\n"))
    assert proc.returncode == 0, proc.stderr
    unit = (root / "etc/systemd/system/dflare-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/dflare-agent serve --host 127.0.0.1 --port 50051" in unit
    assert "@@" not in unit and "Documentation=" not in unit  # no guide beside a wheel to point at
    assert (root / "etc/dflare-agent/token").stat().st_mode & 0o777 == 0o600


def test_the_installed_wheel_carries_its_runtime_data(installed, tmp_path):
    proc = _python(installed, tmp_path, (
        "from importlib import resources\n"
        "for package, name in (('host.deploy', 'dflare-agent.service'), ('host.search', 'normal_quantiles.npy'),\n"
        "                      ('host.report', 'templates/report.html.j2')):\n"
        "    assert (resources.files(package) / name).is_file(), (package, name)\n"
        "print('ok')\n"))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
