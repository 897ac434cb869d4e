"""Developer tasks: `nox -s tests lint typecheck bench demo`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, and import-linter's check that the package's layers only point down."""
    session.install("-e", ".", "ruff>=0.6", "import-linter>=2.1")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("python", "examples/word_report.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark suite; the peers (LlamaIndex, pydantic-graph, Burr, DBOS, LangGraph) go in
    their own venvs under .bench-peers/ (one that pip cannot install is reported, not fatal).
    The postgres extra drives the scale-out scenario's workers."""
    session.install("-e", ".[postgres]")
    session.run("python", "-m", "benchmarks", "--setup-peers", ".bench-peers")
    session.run("python", "-m", "benchmarks", *session.posargs)
