"""The read-side end-to-end tests of ``tests/e2e/test_read_side.py``, unchanged, over the
scaled-out engines: the projector writes the Redis Cluster, the query API reads it and
falls back to the hot-standby replica (through the ADR 0007 rule), the command API and
the worker write the primary.

The test functions are the single-node module's own (imported, not copied), and so are
its ``projector`` and ``query`` fixtures; the fixtures that name an engine are redefined
in this directory's conftest, so every assertion holds in both configurations.
"""

from __future__ import annotations

from tests.e2e import test_read_side as single

# every test of the single-node module, collected again here
globals().update({name: getattr(single, name) for name in dir(single) if name.startswith("test_")})
