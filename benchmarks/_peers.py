"""Peer engines in their own venvs, and the subprocesses that measure them.

A peer is measured by running its venv's python on its driver (`benchmarks._peer_*`), one
process per job, with a timeout so a quadratic peer cannot hang the suite. The same runner
measures our own fresh-process jobs with the suite's python. A peer that pip cannot install
here is recorded as unavailable, with pip's reason, and its column says so.
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


LLAMA_SCENARIOS = frozenset({"chain", "fanout", "runs", "stream", "snapshot", "pause"})
GRAPH_SCENARIOS = frozenset({"chain", "fanout"})
DURABLE_SCENARIOS = frozenset({"durable"})
DBOS_SCENARIOS = frozenset({"durable", "scaleout"})


@attrs.frozen
class Peer:
    """An engine we compare with: its venv name, its name in tables, what pip installs into
    the venv, the driver module, and the scenarios the driver has."""

    name: str
    title: str
    requirements: tuple[str, ...]
    module: str
    scenarios: frozenset[str]


PEERS = (
    Peer(
        "llama-latest",
        "LlamaIndex",
        ("llama-index-workflows",),
        "benchmarks._peer_llama",
        LLAMA_SCENARIOS,
    ),
    # The newest release before its fan-out became quadratic.
    Peer(
        "llama-2.25.0",
        "LlamaIndex",
        ("llama-index-workflows==2.25.0",),
        "benchmarks._peer_llama",
        LLAMA_SCENARIOS,
    ),
    Peer(
        "pydantic-graph",
        "pydantic-graph",
        ("pydantic-graph",),
        "benchmarks._peer_pgraph",
        GRAPH_SCENARIOS,
    ),
    # burr.core.parallelism imports Burr's tracking models, which need pydantic.
    Peer("burr", "Burr", ("burr", "pydantic"), "benchmarks._peer_burr", GRAPH_SCENARIOS),
    Peer("dbos", "DBOS", ("dbos",), "benchmarks._peer_dbos", DBOS_SCENARIOS),
    Peer(
        "langgraph",
        "LangGraph",
        ("langgraph", "langgraph-checkpoint-sqlite"),
        "benchmarks._peer_langgraph",
        DURABLE_SCENARIOS,
    ),
)

UNAVAILABLE = "UNAVAILABLE"
"""A file in a peer's venv directory: why `--setup-peers` could not install it."""


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def setup_peers(directory: Path) -> None:
    """Create (or refresh) one venv per peer under `directory` with pip; unpinned ones upgrade.

    Blocks for as long as pip takes. A peer that cannot be installed does not stop the others:
    its venv directory keeps an UNAVAILABLE file with pip's last words, which the suite shows.
    """
    for peer in PEERS:
        target = directory / peer.name
        (target / UNAVAILABLE).unlink(missing_ok=True)
        try:
            if not venv_python(target).exists():
                print(f"creating {target}", file=sys.stderr)
                venv.create(target, with_pip=True)
            pip = [str(venv_python(target)), "-m", "pip", "install", "--quiet", "-U"]
            print(f"installing {' '.join(peer.requirements)} into {target}", file=sys.stderr)
            subprocess.run([*pip, *peer.requirements], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            output = getattr(exc, "stderr", None) or str(exc)
            why = (output.strip().splitlines() or ["pip failed"])[-1]
            print(f"{peer.name}: unavailable: {why}", file=sys.stderr)
            target.mkdir(parents=True, exist_ok=True)
            (target / UNAVAILABLE).write_text(why + "\n")


@attrs.frozen
class FoundPeer:
    """A peer as this run of the suite will drive it; `python` is None if not installed,
    and then `missing` says why."""

    peer: Peer
    python: Path | None
    missing: str

    @property
    def name(self) -> str:
        return self.peer.name


NOT_INSTALLED = "not installed (run nox -s bench)"


def find_peers(directory: Path, overrides: dict[str, Path]) -> list[FoundPeer]:
    """Each peer's python: from `--peer-python NAME=PATH`, else `directory/NAME`, else None.

    An override with a name that is not a known peer adds a peer driven like LlamaIndex.
    """
    known = {peer.name: peer for peer in PEERS}
    names = [*known, *(name for name in overrides if name not in known)]
    found = []
    for name in names:
        peer = known.get(name) or Peer(
            name, "LlamaIndex", (), "benchmarks._peer_llama", LLAMA_SCENARIOS
        )
        python = overrides.get(name, venv_python(directory / name))
        why = directory / name / UNAVAILABLE
        if why.exists() and name not in overrides:
            found.append(FoundPeer(peer, None, f"unavailable: {why.read_text().strip()}"))
        else:
            found.append(FoundPeer(peer, python if python.exists() else None, NOT_INSTALLED))
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
