"""Every cached stage task takes the parameters its cache key is made of, code version included: a task
without one would only log Prefect's 'Error encountered when computing cache key' and silently stop caching."""

from __future__ import annotations

import importlib
import inspect

import pytest

from flows.common import stage_cache_key


@pytest.mark.parametrize("module", ["flows.ingest", "flows.qc", "flows.tile", "flows.pretrain", "flows.evaluate"])
def test_cached_stage_tasks_take_input_config_and_code_hashes(module):
    tasks = [obj for obj in vars(importlib.import_module(module)).values()
             if getattr(obj, "cache_key_fn", None) is stage_cache_key]
    assert tasks, f"{module} has no task keyed by stage_cache_key"
    for task in tasks:
        params = inspect.signature(task.fn).parameters
        assert {"input_hash", "config_hash", "code_hash"} <= set(params), (module, task.name, list(params))
