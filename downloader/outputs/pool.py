"""The conversion pool: worker processes, one per core, shared by every download of an engine.

Decoding and encoding pixels is CPU work that would stall the event loop (and every download
it runs) for tens of milliseconds per image, and threads would share one interpreter lock.
Workers are spawned, not forked: the engine runs inside Streamlit's server or next to
database connections and threads that a fork would copy half-finished. The pool starts at the
first conversion and is shut down with the engine. A worker that dies (killed by the system,
out of memory) fails only the image it held: the pool is replaced and the next ones go on.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from downloader.outputs.convert import MAX_PIXELS, Converted, ConvertError, convert_file
from downloader.outputs.convert import worker_count as worker_count
from downloader.outputs.profile import OutputProfile

log = logging.getLogger(__name__)


class ConvertPool:
    def __init__(self, workers: int | None = None, max_pixels: int = MAX_PIXELS) -> None:
        self.workers = workers or worker_count()
        self.max_pixels = max_pixels
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._executor

    async def convert(self, source: str | bytes, dest: str, profile: OutputProfile) -> Converted:
        """`convert_file` in a worker process; ConvertError for a source it cannot convert."""
        pool = self._pool()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                pool, convert_file, source, dest, profile, self.max_pixels
            )
        except BrokenProcessPool:
            log.warning("a conversion worker died; starting a new pool")
            if self._executor is pool:
                self._executor = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise ConvertError(
                "conversion_failed", "The image could not be converted (its worker died)."
            ) from None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
