"""Provenance: what a run records about where it came from, read without MLflow: the code's git
state, the Python environment, and the process (to tell later whether it is still alive)."""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent.parent


def git_state(repo: Path = SOURCE_DIR) -> dict[str, str]:
    """Commit, branch and dirty flag of the code's git checkout, and the diff when dirty."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "branch": "", "dirty": "unknown", "diff": ""}
    status = git("status", "--porcelain", "--untracked-files=normal")
    diff = ""
    if status.strip():
        diff = git("diff", "HEAD", "--binary")
        untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
        if untracked:
            diff += "\n# untracked files (not in the diff):\n" + "\n".join(f"#   {u}" for u in untracked) + "\n"
    branch = git("rev-parse", "--abbrev-ref", "HEAD").strip()
    return {"commit": commit, "branch": branch, "dirty": str(bool(status.strip())).lower(), "diff": diff}


def _version(*distributions: str) -> str:
    """The installed version of the first of `distributions` found (read without importing it)."""
    for d in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(d)
    return "not installed"


def environment_tags() -> dict[str, str]:
    return {"python_version": platform.python_version(), "torch_version": _version("torch"),
            "lightning_version": _version("pytorch-lightning", "lightning"), "mlflow_version": _version("mlflow")}


def environment_text() -> str:
    """Python, platform and every installed distribution as name==version: what to install to rerun."""
    names = {}
    for d in importlib.metadata.distributions():
        name = d.metadata["Name"]
        if name:  # a broken install can leave a distribution without metadata
            names.setdefault(name.lower(), f"{name}=={d.version}")
    return (f"python {sys.version.splitlines()[0]}\nexecutable {sys.executable}\nplatform {platform.platform()}\n\n"
            + "".join(f"{line}\n" for _, line in sorted(names.items())))


def _start_ticks(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, Linux), '' where unknown: with the pid,
    it tells a run's own process from a later one that reuses its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def process_tags() -> dict[str, str]:
    """Where the run's process lives: read back by `mark_stale_runs`."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "pid_start": _start_ticks(pid)}


def process_gone(tags: dict[str, str]) -> bool:
    """Whether the process a run's tags name (on this host) no longer exists."""
    if tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
        return False  # another machine's, or a run of an older version: cannot tell
    pid = int(tags["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # exists, another user's
    return bool(tags.get("pid_start")) and _start_ticks(pid) != tags["pid_start"]
