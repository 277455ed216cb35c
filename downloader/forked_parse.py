"""Parsing `run`'s input in a forked child while `run` itself loads its database and engine code.

Both take most of a second (pandas and pyarrow for the one; SQLAlchemy, SQLModel and httpx for
the other), and on two cores they run side by side. The child parses the input and turns it
into the job's rows (`inputs.to_rows.job_rows`), sends them through a pipe and exits; `run` never
loads pandas. POSIX only; fork before this process starts any thread.
"""

from __future__ import annotations

import argparse
import os
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING

from downloader.cli_support import CliError, parse_input
from downloader.errors import UserError
from downloader.processes import fork_child

if TYPE_CHECKING:
    from downloader.job_rows import JobRows


@dataclass
class ForkedParse:
    """The child parsing the input; `rows()` waits for its answer."""

    pid: int
    answer_fd: int

    def rows(self) -> JobRows:
        """The job's rows; CliError with the parser's message when the input is unusable."""
        with os.fdopen(self.answer_fd, "rb") as answer:
            data = answer.read()
        _, status = os.waitpid(self.pid, 0)
        if not data:
            raise CliError(f"reading the input failed (the parser ended with status {status})")
        kind, value = pickle.loads(data)  # noqa: S301 (our own child, through our own pipe)
        if kind == "rows":
            return value
        raise CliError(value)


def parse_in_child(args: argparse.Namespace, max_rows: int) -> ForkedParse:
    """Fork a child that parses `args.input` (a file) into the job's rows."""
    read_fd, write_fd = os.pipe()

    def parse() -> None:  # in the child; a bug there leaves `run` without an answer
        os.close(read_fd)
        answer: tuple[str, object]
        try:
            from downloader.inputs.to_rows import job_rows

            answer = ("rows", job_rows(parse_input(args, max_rows)).materialized())
        except UserError as exc:
            answer = ("error", str(exc))
        with os.fdopen(write_fd, "wb") as out:
            pickle.dump(answer, out, protocol=pickle.HIGHEST_PROTOCOL)

    pid = fork_child(parse)
    os.close(write_fd)
    return ForkedParse(pid, read_fd)
