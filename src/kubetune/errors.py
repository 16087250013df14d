"""Errors a user can act on.

Anything raised as a `KubetuneError` is printed by the CLI (and by each pipeline component) as one
line per problem, with exit code 2, instead of a stack trace: the message must name the problem and
the config key or data column, and say what to do.
"""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2
EXIT_TERMINATED = 143  # 128 + SIGTERM, what Kubernetes and shells expect from a process stopped by it


class KubetuneError(Exception):
    """A problem with the user's input (config, data, paths) — reported without a traceback."""

    exit_code = EXIT_USER_ERROR


class Terminated(KubetuneError):
    """Training was stopped by SIGTERM after saving a checkpoint (reported in one line, exit 143)."""

    exit_code = EXIT_TERMINATED


class ConfigError(KubetuneError):
    """One or more problems in a run config; `problems` holds one line per problem."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class DataError(KubetuneError):
    """The data does not fit the config (a missing column, too many labels, an empty split...)."""


def print_error(message: str, exit_code: int = EXIT_USER_ERROR) -> int:
    """Print how a command ended, one line per problem: `kubetune: error: …`, or `kubetune: …` when SIGTERM
    stopped it (that is not an error); return `exit_code`. The CLI, the pipeline steps and the torchrun
    wrapper all end this way."""
    prefix = "kubetune: " if exit_code == EXIT_TERMINATED else "kubetune: error: "
    for line in message.splitlines():
        print(prefix + line, file=sys.stderr, flush=True)
    return exit_code


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """A library's exception as a few words inside a one-line error: its type and the first line of its
    message, capped. botocore, pyarrow, pydantic, datasets and yaml messages run to many lines (a
    whole schema, a traceback of the server); the user needs what kind of failure it was, not all of it."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name
