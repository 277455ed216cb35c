"""What the engine does with a finished download before storing it: the job's conversion
(in the process pool) and its marketplace checks.

The original stays the verified source: its SHA-256, CRC and size are the bytes the server
sent, stored at the image's key. A converted file goes beside it (storage.output_key) and is
what the ZIPs hold; its format, size and dimensions go to the image's output_* columns.
Each job's options are read from its row once per CACHE_SECONDS (bounded, least recently
used job dropped first).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import anyio
from sqlalchemy import select

from downloader.db import Database
from downloader.fetch import FetchOutcome
from downloader.job_options import JobOptions
from downloader.models import JOB
from downloader.outputs.checks import image_warnings, warnings_json
from downloader.outputs.convert import ConvertError as ConvertError
from downloader.outputs.pool import ConvertPool
from downloader.outputs.profile import CheckRules, OutputProfile

log = logging.getLogger(__name__)

CACHE_JOBS = 256
CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class JobOutputs:
    profile: OutputProfile | None  # None: the original bytes are the output
    rules: CheckRules

    @property
    def idle(self) -> bool:
        return self.profile is None and not self.rules.any


@dataclass(slots=True)
class Prepared:
    """The output of one download: a converted file to store (or none) and the columns."""

    path: Path | None = None
    output_format: str | None = None
    output_bytes: int | None = None
    output_width: int | None = None
    output_height: int | None = None
    warnings: str | None = None


def load_job_outputs(db: Database, job_id: str) -> JobOutputs:
    with db.read() as session:
        text = session.execute(select(JOB.c.options).where(JOB.c.id == job_id)).scalar()
    options = JobOptions.from_json(text)
    return JobOutputs(OutputProfile.from_options(options), CheckRules.from_options(options))


class OutputStage:
    def __init__(self, db: Database, temp_dir: Path, pool: ConvertPool | None = None) -> None:
        self._db = db
        self._temp_dir = temp_dir
        self._pool = pool or ConvertPool()
        self._entries: OrderedDict[str, tuple[float, JobOutputs]] = OrderedDict()

    async def job_outputs(self, job_id: str) -> JobOutputs:
        entry = self._entries.get(job_id)
        if entry is not None and time.monotonic() - entry[0] < CACHE_SECONDS:
            self._entries.move_to_end(job_id)
            return entry[1]
        outputs = await anyio.to_thread.run_sync(load_job_outputs, self._db, job_id)
        self._entries[job_id] = (time.monotonic(), outputs)
        self._entries.move_to_end(job_id)
        while len(self._entries) > CACHE_JOBS:
            self._entries.popitem(last=False)
        return outputs

    async def prepare(self, job_id: str, image_id: int, outcome: FetchOutcome) -> Prepared:
        """Convert (when the job asks) and check one downloaded file (held in memory or in a
        temporary file). ConvertError when the file cannot be converted (the caller records
        it as the image's failure)."""
        source = outcome.body if outcome.body is not None else outcome.temp_path
        assert source is not None and outcome.format is not None
        fmt, size, width, height = outcome.format, outcome.size, outcome.width, outcome.height
        outputs = await self.job_outputs(job_id)
        prepared = Prepared()
        if outputs.idle:
            return prepared
        if outputs.profile is not None:
            dest = self._temp_dir / f"{os.getpid()}-output-{image_id}.{outputs.profile.extension}"
            try:
                converted = await self._pool.convert(
                    source if isinstance(source, bytes) else str(source),
                    str(dest),
                    outputs.profile,
                )
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
            prepared.path = Path(converted.path)
            prepared.output_format = fmt = converted.extension
            prepared.output_bytes = size = converted.size
            prepared.output_width = width = converted.width
            prepared.output_height = height = converted.height
        prepared.warnings = warnings_json(
            image_warnings(outputs.rules, fmt=fmt, size=size, width=width, height=height)
        )
        return prepared

    def close(self) -> None:
        self._pool.close()
