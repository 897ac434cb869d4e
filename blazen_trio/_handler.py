"""The control surface of a running workflow."""

from __future__ import annotations

import attrs

from ._errors import WorkflowError
from ._run import Run, RunStatus, Usage, WorkflowResult


@attrs.define(eq=False)
class WorkflowHandler:
    """Returned by `Workflow.start`; observe and control one run from outside it."""

    _run: Run

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def status(self) -> RunStatus:
        return self._run.status

    @property
    def usage(self) -> Usage:
        """Live token totals; exact whatever stream subscribers do."""
        return self._run.usage

    @property
    def cost_usd(self) -> float:
        return self._run.cost_usd

    async def result(self) -> WorkflowResult:
        """Wait for the run to end; return its result or raise its `WorkflowError`.

        Any number of tasks may wait; each gets the same result or error.
        """
        await self._run.finished.wait()
        outcome = self._run.outcome
        if isinstance(outcome, WorkflowError):
            raise outcome.with_traceback(None)
        assert outcome is not None
        return outcome

    async def abort(self) -> None:
        """Cancel every task of the run and return once all have exited.

        Raises `RunFinished` if the run had already ended.
        """
        self._run.check_running("abort")
        self._run.abort()
        await self._run.finished.wait()
