"""Schemathesis hooks for .ci/schemathesis.sh.

Long polls (a group claim's `wait_ms`, a named query's `wait_ms` for `min_position`) may
legitimately wait up to 60 s; a generated wait is capped at 100 ms before the request is
sent, so that a run stays within its time budget. Values outside the documented range
are left alone, so the server still has to refuse them.
"""

import schemathesis

LONGEST_WAIT_MS = 100


def _cap(container):
    if not isinstance(container, dict):
        return
    value = container.get("wait_ms")
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)) and LONGEST_WAIT_MS < value <= 60_000:
        container["wait_ms"] = LONGEST_WAIT_MS
    elif isinstance(value, str) and value.isdigit() and LONGEST_WAIT_MS < int(value) <= 60_000:
        container["wait_ms"] = str(LONGEST_WAIT_MS)


@schemathesis.hook
def before_call(context, case, **kwargs):
    _cap(case.body)
    _cap(case.query)
