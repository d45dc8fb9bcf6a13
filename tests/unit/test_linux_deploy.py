"""The systemd unit and ``dflare deploy linux`` staging; ``dflare deploy build``."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from host.cli import main
from host.deploy.linux import UNIT_TEMPLATE, install, render_unit, verify_unit
from host.errors import ConfigError

_HAVE_SYSTEMD_ANALYZE = shutil.which("systemd-analyze") is not None
_SKIP_REASON = "systemd-analyze not installed (apt-get install systemd) — the unit is not verified here"


def _agent_path() -> str:
    return str(Path(sys.executable).with_name("dflare-agent"))


@pytest.mark.skipif(not _HAVE_SYSTEMD_ANALYZE, reason=_SKIP_REASON)
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "dflare-agent.service"
    unit.write_text(render_unit(_agent_path(), port=50071))
    clean, output = verify_unit(unit)
    assert clean, output


@pytest.mark.skipif(not _HAVE_SYSTEMD_ANALYZE, reason=_SKIP_REASON)
def test_verify_catches_a_misplaced_key_and_a_missing_binary(tmp_path: Path) -> None:
    unit = tmp_path / "dflare-agent.service"
    text = render_unit(_agent_path())
    unit.write_text(text.replace("[Service]\n", "[Service]\nStartLimitIntervalSec=9s\n"))  # belongs in [Unit]
    assert not verify_unit(unit)[0]
    unit.write_text(render_unit("/nonexistent/dflare-agent"))
    assert not verify_unit(unit)[0]


def test_unit_is_hardened_and_passes_the_token_as_a_credential() -> None:
    text = render_unit("/opt/dflare/bin/dflare-agent", port=50099)
    for line in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure",
                 "LoadCredential=token:/etc/dflare-agent/token", "CapabilityBoundingSet=", "PrivateTmp=yes"):
        assert f"\n{line}\n" in text, line
    assert ("ExecStart=/opt/dflare/bin/dflare-agent serve --host 127.0.0.1 --port 50099 "
            "--token-file ${CREDENTIALS_DIRECTORY}/token --cache-dir ${CACHE_DIRECTORY}\n") in text
    placeholder = re.compile(r"@@[A-Z_]+@@")
    assert not placeholder.search(text) and placeholder.search(UNIT_TEMPLATE.read_text())


@pytest.mark.parametrize("kwargs", [{"agent": "dflare-agent"}, {"agent": "/opt/my agent"}, {"port": 0},
                                    {"extra_args": ("--x=$HOME",)}])
def test_render_rejects_values_systemd_would_misread(kwargs) -> None:
    args = {"agent": "/opt/dflare/bin/dflare-agent", **kwargs}
    with pytest.raises(ConfigError):
        render_unit(**args)


def test_install_stages_a_root_only_token_and_keeps_it_unless_rotated(tmp_path: Path) -> None:
    first = install(root=tmp_path, agent="/opt/dflare/bin/dflare-agent", start=False)
    assert first.unit_path == tmp_path / "etc/systemd/system/dflare-agent.service"
    assert first.token_path == tmp_path / "etc/dflare-agent/token" and not first.started
    assert stat.S_IMODE(first.token_path.stat().st_mode) == 0o600 and len(first.token) >= 32
    assert install(root=tmp_path, agent="/opt/dflare/bin/dflare-agent", start=False).token == first.token
    rotated = install(root=tmp_path, agent="/opt/dflare/bin/dflare-agent", start=False, rotate_token=True)
    assert rotated.token != first.token


def test_cli_deploy_linux_and_build(tmp_path: Path, capsys) -> None:
    assert main(["deploy", "linux", "--root", str(tmp_path / "root"), "--agent", "/opt/d/bin/dflare-agent",
                 "--port", "50123"]) == 0
    unit = (tmp_path / "root/etc/systemd/system/dflare-agent.service").read_text()
    assert "--port 50123" in unit and "not started" in capsys.readouterr().out

    assert main(["deploy", "build", "--platform", "linux-aarch64", "--out", str(tmp_path / "dist")]) == 0
    pyz = tmp_path / "dist/dflare-agent.pyz"
    names = zipfile.ZipFile(pyz).namelist()
    assert "__main__.py" in names and "device_agent/runtime.py" in names
    assert "_vendor/google/protobuf/__init__.py" in names and "_vendor/grpc_health/v1/health.py" in names
    assert not any(n.endswith(".so") for n in names)
    assert "numpy, grpcio" in capsys.readouterr().out


def test_zipapp_runs_with_only_the_native_modules_installed(tmp_path: Path) -> None:
    """The zipapp + the device's native numpy/grpcio must be enough: no host package, no site-packages."""
    from host.deploy.bundle import build_bundle

    bundle = build_bundle(tmp_path / "dist", "linux-x86_64")
    native = tmp_path / "native"
    native.mkdir()
    import grpc
    import numpy

    for module in (numpy, grpc):
        (native / module.__name__).symlink_to(Path(module.__file__).parent)
    probe = ("import runpy, sys; sys.argv=['x']; "
             "import device_agent, grpc_health.v1.health, google.protobuf; "
             "from google.protobuf.internal import api_implementation as a; print(a.Type())")
    # -S: no site-packages; -c with the zip first on sys.path, like `python3 dflare-agent.pyz`.
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0]=[{str(bundle.path)!r}, "
                          f"{str(bundle.path) + '/_vendor'!r}, {str(native)!r}]; " + probe],
                         capture_output=True, text=True, timeout=60,
                         env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "python"


def test_a_failed_bundle_build_keeps_the_previous_bundle_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    from host.deploy import bundle as bundle_module

    out = tmp_path / "dist"
    built = bundle_module.build_bundle(out, "linux-x86_64")
    before = built.path.read_bytes()
    real = bundle_module._package_files
    monkeypatch.setattr(bundle_module, "_package_files",
                        lambda name: [*real(name), (tmp_path / "vanished.py", "vanished.py")])
    with pytest.raises(FileNotFoundError):
        bundle_module.build_bundle(out, "linux-x86_64")
    assert built.path.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [bundle_module.BUNDLE_NAME, bundle_module.BUNDLE_NAME + ".json"]
