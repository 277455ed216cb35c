"""Fixtures shared by every test module (pytest only honours pytest_plugins here, at the root)."""

pytest_plugins = [
    "tests.support.imageserver",
    "tests.support.s3server",
    "tests.support.pg",
]
