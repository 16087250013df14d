"""`python -m kubetune.launchers.torchrun ARGS`: torchrun, ending the way a kubetune command ends.

Plain torchrun ends every failure of a rank with exit code 1 and its own ChildFailedError traceback,
among which the failing rank's one-line message is easily lost; and SIGTERM to torchrun itself (what
Kubernetes sends a pod's main process) also ends in exit 1, after the ranks saved their checkpoint.
This runs the same agent with the same arguments (`torch.distributed.run`), then:

- a user error on any rank (the rank exited 2): its one line, exit 2;
- SIGTERM (to torchrun or to the ranks; they save a checkpoint first): rank 0's line, exit 143;
- anything else: one line naming the rank and its exit code (its traceback is in its log), exit 1.

The ranks (`kubetune train`) write their outcome to $KUBETUNE_OUTCOME_DIR/rank-<RANK>.json, a folder
this wrapper makes for them. The line is printed (`kubetune: error: ...`), or, when the caller sets
$KUBETUNE_FAILURE_FILE (the local launcher), written there as JSON for the caller to report.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubetune.errors import EXIT_TERMINATED, EXIT_USER_ERROR, print_error

OUTCOME_DIR_ENV = "KUBETUNE_OUTCOME_DIR"
FAILURE_FILE_ENV = "KUBETUNE_FAILURE_FILE"
EXIT_FAILED = 1


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    message: str
    rank: int | None = None


# ---------------------------------------------------------------------------------------- the ranks
def under_wrapper() -> bool:
    """True in a rank started by this wrapper: the wrapper, not the rank, reports the outcome."""
    return bool(os.environ.get(OUTCOME_DIR_ENV))


def record_rank_outcome(exit_code: int, message: str) -> None:
    """Called by a rank that is about to exit with `exit_code` for a reason it can say in `message`.

    Written where this wrapper reads it, and into torchrun's error file (TORCHELASTIC_ERROR_FILE), so
    that under plain torchrun the summary shows the line instead of "<N/A>"."""
    rank = int(os.environ.get("RANK", "0"))
    directory = os.environ.get(OUTCOME_DIR_ENV)
    if directory:
        _write_json(Path(directory) / f"rank-{rank}.json", {"exit_code": exit_code, "message": message, "rank": rank})
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        stamp = str(int(time.time()))
        _write_json(Path(error_file), {"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": stamp}}})


def _write_json(path: Path, data: Mapping[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data) + "\n")
    temporary.replace(path)


def read_outcomes(directory: Path) -> dict[int, Outcome]:
    outcomes = {}
    for path in sorted(directory.glob("rank-*.json")):
        data = json.loads(path.read_text())
        outcomes[int(data["rank"])] = Outcome(int(data["exit_code"]), str(data["message"]), int(data["rank"]))
    return outcomes


# --------------------------------------------------------------------------------------- the verdict
def verdict(outcomes: Mapping[int, Outcome], exit_codes: Mapping[int, int], signaled: int | None = None) -> Outcome:
    """How the whole run ended, from what the ranks said (`outcomes`), how they exited (`exit_codes`, by rank,
    failures only) and the signal that stopped torchrun itself, if one did."""
    user_errors = [outcomes[rank] for rank in sorted(outcomes) if outcomes[rank].exit_code == EXIT_USER_ERROR]
    if user_errors:
        return user_errors[0]  # every rank usually reports the same problem; the lowest rank's line stands
    terminated = [outcomes[rank] for rank in sorted(outcomes) if outcomes[rank].exit_code == EXIT_TERMINATED]
    stopped_by_sigterm = signaled == signal.SIGTERM or (
        exit_codes and all(code in (EXIT_TERMINATED, -signal.SIGTERM) for code in exit_codes.values())
    )
    if terminated:
        return terminated[0]
    if stopped_by_sigterm:
        return Outcome(EXIT_TERMINATED, "stopped by SIGTERM before a checkpoint was saved; run the same command to "
                                        "resume from the newest complete checkpoint, if any")
    if signaled is not None:
        name = signal.Signals(signaled).name
        return Outcome(128 + signaled, f"stopped by {name}; run the same command to resume from the newest complete checkpoint")
    if exit_codes:
        rank = min(exit_codes, key=lambda r: (exit_codes[r] in (EXIT_TERMINATED, -signal.SIGTERM), r))
        code = exit_codes[rank]
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return Outcome(EXIT_FAILED, f"training failed: rank {rank} {how}; its log above says why", rank)
    return Outcome(0, "")


# ------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # Its "failed (exitcode: 2) local_rank: 0 ... of binary" and "Sending process ... closing signal" lines
    # say less than the one line this wrapper ends with.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    directory = Path(tempfile.mkdtemp(prefix="kubetune-outcomes-"))
    os.environ[OUTCOME_DIR_ENV] = str(directory)  # the ranks inherit it
    exit_codes: dict[int, int] = {}
    signaled: int | None = None
    try:
        try:
            run(args)
        except ChildFailedError as failed:
            exit_codes = {rank: failure.exitcode for rank, failure in failed.failures.items()}
        except SignalException as stop:
            signaled = int(stop.sigval)
        result = verdict(read_outcomes(directory), exit_codes, signaled)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if result.exit_code != 0:
        report(result)
    return result.exit_code


def report(result: Outcome) -> None:
    failure_file = os.environ.get(FAILURE_FILE_ENV)
    if failure_file:
        _write_json(Path(failure_file), {"exit_code": result.exit_code, "message": result.message, "rank": result.rank})
        return
    print_error(result.message, result.exit_code)


if __name__ == "__main__":
    sys.exit(main())
