"""docs/configuration.md is generated from the Settings class and must not drift from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from downloader.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location(
        "configuration_doc", ROOT / "scripts" / "configuration_doc.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_doc_lists_every_setting_as_the_class_defines_it():
    expected = _generator().render()
    actual = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert actual == expected, "run: .venv/bin/python scripts/configuration_doc.py"


def test_every_setting_says_what_it_means():
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not missing, f"settings without a description: {missing}"
