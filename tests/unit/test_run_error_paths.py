"""``dflare run`` error paths (issue 23): one line naming the problem and the usage exit code, never a traceback.

``--out`` naming a file or on a read-only filesystem (a real one: a read-only tmpfs in a private
mount namespace, when this user may make one), and seed labels the models cannot output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from host.cli import main
from host.exit_codes import ExitCode
from tests.agent_support import ROOT, agent_env
from tests.campaign_support import model, seeds


def run_flags(out: Path, seed_file: Path | None = None) -> list[str]:
    return ["run", "--original", str(model("digits28", "float32")), "--compressed", str(model("digits28", "int8")),
            "--seeds", str(seed_file or seeds("digits28")), "--out", str(out), "--limit", "4", "--max-queries", "50",
            "--progress", "log"]


def test_out_naming_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.txt"
    out.write_text("not a directory")
    assert main(run_flags(out)) == ExitCode.usage
    err = capsys.readouterr().err
    expected = f"dflare: error: --out {out} is a file, not a directory: pass a directory (created if missing)"
    assert err.strip() == expected


def test_out_under_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(run_flags(blocker / "out")) == ExitCode.usage
    err = capsys.readouterr().err
    assert err.startswith(f"dflare: error: cannot create --out {blocker / 'out'}: ") and err.count("\n") == 1


def _can_mount_read_only(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    result = subprocess.run([unshare, "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {probe}"],
                            capture_output=True, timeout=30)
    return result.returncode == 0


def test_out_on_a_read_only_filesystem_is_a_usage_error(tmp_path: Path) -> None:
    if not _can_mount_read_only(tmp_path):
        pytest.skip("cannot mount a read-only tmpfs here (needs unshare -m and CAP_SYS_ADMIN)")
    ro = tmp_path / "ro"
    ro.mkdir()
    command = " ".join([f"mount -t tmpfs -o ro tmpfs {ro} &&", "exec", sys.executable, "-m", "host.cli",
                        *run_flags(ro / "out")])
    result = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120,
                            env=agent_env(), cwd=str(ROOT))
    assert result.returncode == ExitCode.usage, result.stderr
    assert "Traceback" not in result.stderr
    assert f"dflare: error: cannot create --out {ro / 'out'}: Read-only file system" in result.stderr


@pytest.mark.parametrize("bad_label", [99, -1])
def test_seed_labels_out_of_range_are_an_error_naming_the_label(tmp_path: Path, bad_label: int,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = np.load(seeds("digits28"))
    y = np.array(data["y"][:4])
    y[2] = bad_label
    seed_file = tmp_path / "seeds.npz"
    np.savez(seed_file, x=data["x"][:4], y=y)
    assert main(run_flags(tmp_path / "out", seed_file)) == ExitCode.usage
    err = capsys.readouterr().err
    assert f"seed label {bad_label} (seed 2 of {seed_file}) is out of range" in err
    assert "labels are 0..9" in err
