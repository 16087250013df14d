"""Rank awareness, decided in one place.

torchrun, the Kubeflow Training Operator and DeepSpeed all describe a process's place in the job
with the same environment variables (RANK, WORLD_SIZE, LOCAL_RANK; the operator also sets PET_*).
Every print, file write, MLflow call and upload in kubetune asks `is_main_process()` first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


# Open MPI's names for a rank's place (mpirun under the TrainJob's deepspeed-distributed runtime).
_MPI_NAMES = {
    "RANK": "OMPI_COMM_WORLD_RANK",
    "WORLD_SIZE": "OMPI_COMM_WORLD_SIZE",
    "LOCAL_RANK": "OMPI_COMM_WORLD_LOCAL_RANK",
    "LOCAL_WORLD_SIZE": "OMPI_COMM_WORLD_LOCAL_SIZE",
}


def adopt_mpi_environment() -> None:
    """Under mpirun, set RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE from Open MPI's variables, so
    that torch.distributed (env://), DeepSpeed and every `is_main_process()` see a rank the way torchrun
    describes it. A variable already set (torchrun's) is left alone."""
    if "OMPI_COMM_WORLD_RANK" not in os.environ:
        return
    for name, mpi_name in _MPI_NAMES.items():
        if mpi_name in os.environ:
            os.environ.setdefault(name, os.environ[mpi_name])


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return _env_int("RANK", default=0)


def local_rank() -> int:
    """Rank of this process on its node (selects its GPU)."""
    return _env_int("LOCAL_RANK", default=0)


def world_size() -> int:
    """Processes in the job (1 when not distributed)."""
    return _env_int("WORLD_SIZE", default=1)


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    """True on exactly one process of the job: the one that prints, writes and logs."""
    return rank() == 0


def is_local_main_process() -> bool:
    """True on one process per node (for node-local work such as caching files on local disk)."""
    return local_rank() == 0


def barrier() -> None:
    """Wait for every rank, when a process group is up; a no-op otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (heavy one-off work, then reuse)."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def print_main(*args: object, **kwargs: object) -> None:
    """print() on the main process only."""
    if is_main_process():
        print(*args, **kwargs, flush=True)  # type: ignore[call-overload]
