"""Peer engines in their own venvs, and the subprocesses that measure them.

A peer is measured by running its venv's python on `benchmarks._peer_llama`, one process per
job, with a timeout so a quadratic peer cannot hang the suite. The same runner measures our own
fresh-process jobs with the suite's python.
"""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import attrs

from benchmarks._measure import Job

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PEERS_DIR = REPO_ROOT / ".bench-peers"


@attrs.frozen
class Peer:
    """An engine we compare with: a venv name, what pip installs into it, the driver module."""

    name: str
    requirement: str
    module: str = "benchmarks._peer_llama"


PEERS = (
    Peer("llama-latest", "llama-index-workflows"),
    # The newest release before its fan-out became quadratic.
    Peer("llama-2.25.0", "llama-index-workflows==2.25.0"),
)


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def setup_peers(directory: Path) -> None:
    """Create (or refresh) one venv per peer under `directory` with pip; "latest" is upgraded.

    Blocks for as long as pip takes; raises CalledProcessError if an install fails.
    """
    for peer in PEERS:
        target = directory / peer.name
        if not venv_python(target).exists():
            print(f"creating {target}", file=sys.stderr)
            venv.create(target, with_pip=True)
        pip = [
            str(venv_python(target)),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-U",
        ]
        subprocess.run([*pip, peer.requirement], check=True)


@attrs.frozen
class FoundPeer:
    """A peer as this run of the suite will drive it; `python` is None if not installed."""

    name: str
    python: Path | None
    module: str


def find_peers(directory: Path, overrides: dict[str, Path]) -> list[FoundPeer]:
    """Each peer's python: from `--peer-python NAME=PATH`, else `directory/NAME`, else None.

    An override with a name that is not a known peer adds a peer driven like LlamaIndex.
    """
    known = {peer.name: peer for peer in PEERS}
    names = [*known, *(name for name in overrides if name not in known)]
    found = []
    for name in names:
        python = overrides.get(name, venv_python(directory / name))
        module = known[name].module if name in known else Peer(name, "").module
        found.append(FoundPeer(name, python if python.exists() else None, module))
    return found


def run_child(python: Path | str, module: str, job: Job, timeout_s: float) -> dict[str, object]:
    """Run `python -m module '<job JSON>'` from the repo root; its JSON answer, or why none.

    The answer has `samples` or one of `unsupported`, `gave_up`, `error`, `timeout`.
    """
    command = [str(python), "-m", module, json.dumps(job)]
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"timeout": f"timeout >{timeout_s:.0f}s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {last}"}
    answer = json.loads(lines[-1])
    if not isinstance(answer, dict):
        return {"error": f"unexpected answer {lines[-1][:80]!r}"}
    return answer
