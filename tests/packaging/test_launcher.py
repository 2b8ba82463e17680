"""The one-file launcher (packaging/launcher.sh): unpacks a build once into its cache folder, then only execs it.

Tested with a small stand-in payload (a shell script named edgebox), built by the same packaging/make-launcher.sh
that scripts/build-binary.sh uses; the real binary is covered by scripts/smoke-binary.sh.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAKE_LAUNCHER = ROOT / "packaging" / "make-launcher.sh"
# Prints its PID, its folder and its arguments, and exits with the status given as $1 (default 0).
FAKE_ENGINE = '#!/bin/sh\necho "pid=$$ dir=$(dirname "$0") args=$*"\nexit "${1:-0}"\n'


def make_binary(tmp_path: Path, build: str, name: str = "edgebox") -> Path:
    """A launcher file whose payload is FAKE_ENGINE (plus a marker naming the build)."""
    payload = tmp_path / f"payload-{build}.tar.gz"
    with tarfile.open(payload, "w:gz") as tar:
        for member_name, text, mode in (("./edgebox", FAKE_ENGINE, 0o755), ("./_internal/build.txt", build, 0o644)):
            data = text.encode()
            info = tarfile.TarInfo(member_name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / name
    subprocess.run(["bash", str(MAKE_LAUNCHER), str(payload), f"0.1.0-{build}", "1", str(out)], check=True)
    return out


def run(binary: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], check=False, env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30)


def test_first_start_unpacks_later_starts_only_exec(tmp_path: Path):
    binary = make_binary(tmp_path, "aaaa1111")
    env = {"HOME": str(tmp_path)}
    first = run(binary, "0", "--config", "x y.json", env=env)
    assert first.returncode == 0, first.stderr
    assert "unpacking" in first.stderr
    cache = tmp_path / ".cache" / "edgebox" / "0.1.0-aaaa1111"
    assert first.stdout.split(" dir=")[1].startswith(f"{cache} args=0 --config x y.json")
    second = run(binary, "0", env=env)
    assert second.returncode == 0 and second.stderr == ""
    assert sorted(p.name for p in cache.parent.iterdir()) == ["0.1.0-aaaa1111"]


def test_exit_status_and_pid_are_the_engines(tmp_path: Path):
    binary = make_binary(tmp_path, "bbbb2222")
    proc = subprocess.Popen([str(binary), "7"], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 7
    assert f"pid={proc.pid} " in out  # exec, not a child: SIGTERM from systemd reaches the engine itself


def test_cache_folder_order_edgebox_cache_dir_then_systemd_cache_directory(tmp_path: Path):
    binary = make_binary(tmp_path, "cccc3333")
    explicit, systemd = tmp_path / "explicit", tmp_path / "systemd"
    systemd.mkdir()
    out = run(binary, env={"HOME": str(tmp_path), "EDGEBOX_CACHE_DIR": str(explicit),
                           "CACHE_DIRECTORY": str(systemd)}).stdout
    assert f"dir={explicit}/0.1.0-cccc3333 " in out
    out = run(binary, env={"HOME": str(tmp_path), "CACHE_DIRECTORY": f"{systemd}:/elsewhere"}).stdout
    assert f"dir={systemd}/0.1.0-cccc3333 " in out


def test_upgrade_keeps_the_previous_build_and_drops_older_ones(tmp_path: Path):
    env = {"EDGEBOX_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "cache" / "not-ours-1").mkdir(parents=True)  # a shared cache folder: only marked builds go
    for build in ("000000a1", "000000a2", "000000a3"):
        binary = make_binary(tmp_path, build)
        assert run(binary, env=env).returncode == 0
        marker = tmp_path / "cache" / f"0.1.0-{build}" / ".edgebox-build"
        os.utime(marker, (1, 1) if build == "000000a1" else None)  # unpacked long ago
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["0.1.0-000000a2", "0.1.0-000000a3",
                                                                      "not-ours-1"]


def test_damaged_file_fails_loudly_and_leaves_nothing_half_unpacked(tmp_path: Path):
    binary = make_binary(tmp_path, "dddd4444")
    data = binary.read_bytes()
    binary.write_bytes(data[: len(data) - 40])  # a truncated copy
    result = run(binary, env={"EDGEBOX_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 70
    assert "edgebox launcher:" in result.stderr
    assert list((tmp_path / "cache").iterdir()) == []


def test_concurrent_first_starts_all_run_and_publish_one_folder(tmp_path: Path):
    starts = 4
    binary = make_binary(tmp_path, "eeee5555")
    env = {"PATH": "/usr/bin:/bin", "EDGEBOX_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([str(binary)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(starts)]
    for proc in procs:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == ["0.1.0-eeee5555"]
    assert sorted(p.name for p in (cache / "0.1.0-eeee5555").iterdir()) == [".edgebox-build", "_internal", "edgebox"]
