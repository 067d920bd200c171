"""The library's log lines in the Prefect UI: `pluto.*` and `flows.*` records go to the run they were logged in.

Prefect sends only its run loggers' records to the API; `PREFECT_LOGGING_EXTRA_LOGGERS` would add
its API handler to other loggers, but leaves their level at the root's WARNING and needs the
variable in every process. `route_library_logs` does both in the process that calls it, and
`flows/__init__.py` calls it, so every process that runs a flow or task from this package (the
flow process, each Dask worker that unpickles a task) routes the lines without configuration.
Records logged outside a flow or task run (the CLI, a library call in a test) are not sent.
"""

from __future__ import annotations

import logging

LIBRARY_LOGGERS = ("pluto", "flows")


def _in_a_run(record: logging.LogRecord) -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def route_library_logs(level: int = logging.INFO) -> None:
    """Give each library logger Prefect's API handler (once) and `level` where it has none of its own."""
    from prefect.logging.handlers import APILogHandler

    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)
        if not any(isinstance(h, APILogHandler) for h in logger.handlers):
            handler = APILogHandler()
            handler.addFilter(_in_a_run)
            logger.addHandler(handler)
