"""Executors: run unit payloads in-process (``local``) or as Ray tasks (``ray``).

Both call ``on_result`` on the driver for every finished unit, so the driver alone writes
the run store and Ray needs no shared filesystem. Ray tasks ask for one GPU when the
cluster has GPUs, and are retried by Ray (``max_retries``) when a worker dies mid-task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from husai.errors import UserError
from husai.experiments.unit import UnitPayload, UnitResult, execute_unit

log = logging.getLogger(__name__)
OnResult = Callable[[UnitResult], None]


def run_local(payloads: Iterable[UnitPayload], on_result: OnResult) -> None:
    for payload in payloads:
        on_result(execute_unit(payload))


def run_ray(
    payloads: list[UnitPayload],
    on_result: OnResult,
    address: str | None = None,
    max_retries: int = 3,
) -> None:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray: ray is not installed (pip install 'husai[ray]')") from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING)
    on_gpu = bool(payloads) and payloads[0].device != "cpu"
    if on_gpu and ray.cluster_resources().get("GPU", 0) < 1:
        raise UserError("device cuda: the Ray cluster has no GPU; use device cpu")
    n_gpus = 1 if on_gpu else 0  # a unit asks for the GPU it trains on, and only then
    task = ray.remote(num_gpus=n_gpus, max_retries=max_retries)(execute_unit)
    pending = {task.remote(p): p.unit_id for p in payloads}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        unit_id = pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as err:  # retries exhausted: record the failure, keep going
            log.warning("unit %s failed on ray: %s", unit_id, err)
            result = UnitResult(
                unit_id, "failed", error=f"ray: {type(err).__name__}: {str(err).splitlines()[0]}"
            )
        on_result(result)
