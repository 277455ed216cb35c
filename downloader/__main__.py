"""Entry point: `python -m downloader`."""

import contextlib
import logging
import os
import sys

# numpy (under pandas, which parses inputs) starts an OpenBLAS thread per core, and those
# spun for ~0.5% of a 10,000-image run's CPU (perf); nothing here does linear algebra.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from downloader.cli import main  # after the setting above

if __name__ == "__main__":
    code = main()
    # Every command has written its output and committed its work by now. The interpreter's
    # own teardown would free the loaded modules' objects (SQLAlchemy, pandas) one by one:
    # ~0.15 s between `run`'s summary line and its exit (strace), 2-3% of a 10,000-image run.
    # A profiler or coverage tracer writes its results at exit: then exit normally.
    if sys.getprofile() is None and sys.gettrace() is None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
