"""`python -m kubetune.launchers.mpirun --np N --forward A,B -- kubetune train ...`: the trainer under MPI.

The TrainJob's command under the `deepspeed-distributed` runtime (cluster.runtime), run in the MPI
launcher pod. Kubeflow Trainer mounts the hostfile of the job's nodes (one line per node, `slots=`
GPUs per node); mpirun starts every rank over ssh, in rank order host by host, so rank 0 runs on the
first host. torch.distributed then meets there: MASTER_ADDR is that host, and each rank turns Open
MPI's OMPI_COMM_WORLD_* variables into RANK / WORLD_SIZE / LOCAL_RANK
(`kubetune.distributed.adopt_mpi_environment`), so rank detection is the same as under torchrun.

Ranks started over ssh get sshd's environment, not the pod's: every variable the trainer needs
(the Secrets' keys too, by name only) is forwarded with `-x NAME`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kubetune.errors import KubetuneError, print_error

# Where Kubeflow Trainer's MPI plugin mounts the hostfile (Open MPI also finds it through this variable).
HOSTFILE = "/etc/mpi/hostfile"
HOSTFILE_ENV = "OMPI_MCA_orte_default_hostfile"
MASTER_PORT = 29500


def first_host(hostfile: Path) -> str:
    for line in hostfile.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            return words[0]
    raise KubetuneError(f"the MPI hostfile {hostfile} lists no host; is the TrainJob's runtime deepspeed-distributed?")


def mpirun_command(np: int, hostfile: Path, forward: Sequence[str], command: Sequence[str]) -> list[str]:
    exports = ["MASTER_ADDR=" + first_host(hostfile), f"MASTER_PORT={MASTER_PORT}", *forward]
    return [
        "mpirun", "--hostfile", str(hostfile), "-np", str(np),
        # Each rank picks its GPU by LOCAL_RANK; Open MPI's core binding would starve the data loaders.
        "--bind-to", "none", "--map-by", "slot",
        *[arg for name in exports for arg in ("-x", name)],
        sys.executable, "-m", *command,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.launchers.mpirun")
    parser.add_argument("--np", type=int, required=True, help="Ranks in all: nodes x processes per node.")
    parser.add_argument("--forward", default="", help="Comma-separated environment variables every rank needs.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the module and its arguments (kubetune train ...).")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    hostfile = Path(os.environ.get(HOSTFILE_ENV) or HOSTFILE)
    try:
        if not command:
            raise KubetuneError("kubetune.launchers.mpirun: no command after --")
        if not hostfile.is_file():
            raise KubetuneError(f"the MPI hostfile {hostfile} is missing; this command runs in a TrainJob of the "
                                "deepspeed-distributed runtime")
        full = mpirun_command(args.np, hostfile, [n for n in args.forward.split(",") if n], command)
    except KubetuneError as exc:
        return print_error(str(exc))
    print(" ".join(full[:full.index(sys.executable)]) + " ... " + " ".join(command[:2]), flush=True)
    os.execvp(full[0], full)  # mpirun's exit code is the step's: the launcher pod ends with it
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
