"""Reproducible benchmarks: our downloader against aria2c and curl, served by a local nginx.

Entry point: ``python -m benchmarks.run_all`` (see benchmarks/README.md). Not run by CI.
"""
