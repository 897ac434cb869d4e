"""The codec tests' strategies, as module-level objects; they live in `blazen_trio.testing`."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from blazen_trio._codec import WorkflowSnapshot, encode_value
from blazen_trio.testing import snapshots as _snapshots, state_values

supported_values: st.SearchStrategy[Any] = state_values()
"""Values `encode_value` keeps exactly (without pickle), nested in the builtin containers."""

wire_forms: st.SearchStrategy[Any] = supported_values.map(lambda v: encode_value(v, key="gen"))
"""Wire forms of supported values, as `encode_value` writes them."""

snapshots: st.SearchStrategy[WorkflowSnapshot] = _snapshots()
"""Valid snapshots of every shape (their state is made of real wire forms)."""
