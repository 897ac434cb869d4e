"""`blazen_trio.testing` needs hypothesis; without it, the import error says how to get it."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_HYPOTHESIS = """
import sys

sys.modules["hypothesis"] = None  # what an environment without hypothesis looks like
import blazen_trio  # the engine itself does not need it

try:
    import blazen_trio.testing
except ImportError as exc:
    print(f"{type(exc).__name__} from {type(exc.__cause__).__name__}: {exc}")
"""


def test_without_hypothesis_importing_the_testing_tools_names_the_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_HYPOTHESIS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == (
        "ImportError from ModuleNotFoundError: blazen_trio.testing needs hypothesis; install "
        "the extra: pip install -e '.[testing]' (in a checkout of blazen_trio)\n"
    )
