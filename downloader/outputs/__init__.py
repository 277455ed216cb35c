"""Converted outputs (issue 23): output profiles, the conversion pool, marketplace checks.

`profile` describes what a job asks for (from its JobOptions), `convert` does the pixel work
(run in worker processes by `pool`), `checks` turns a stored file's facts into warnings, and
`stage` is what the engine calls for each finished download.
"""
