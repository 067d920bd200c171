"""Prefect flows over the pluto library. Importing the package routes the library's log lines to
the Prefect run they are logged in (flows.logs), in the flow process and in every Dask worker."""

from flows.logs import route_library_logs

route_library_logs()
