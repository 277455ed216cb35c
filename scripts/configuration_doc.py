"""Write docs/configuration.md from the Settings class: every setting, its default, its meaning.

Usage: .venv/bin/python scripts/configuration_doc.py   (tests/test_configuration_doc.py fails
when the file and the class differ, so the table can never drift from the code).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic_core import PydanticUndefined  # noqa: E402

from downloader.settings import Settings  # noqa: E402

DOC = ROOT / "docs" / "configuration.md"
HEADER = """# Configuration

Every setting, read from the environment (names are case-insensitive; the proxy variables are
also read in lower case). An invalid value stops the program at start with a message naming
the setting. Generated from `downloader/settings.py` by `scripts/configuration_doc.py`; a test
fails when this file and the class differ.

| setting | default | meaning |
|---|---|---|
"""


def _default(field: object) -> str:
    default = getattr(field, "default", PydanticUndefined)
    factory = getattr(field, "default_factory", None)
    if default is PydanticUndefined and factory is not None:
        default = factory()
    if default is None or default == [] or default == "":
        return "(none)"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return "`" + ",".join(str(item) for item in default) + "`"
    return f"`{default}`"


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {_default(field)} | {meaning} |")
    return HEADER + "\n".join(rows) + "\n"


def main() -> None:
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
