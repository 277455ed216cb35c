"""Entry point: `python -m downloader`."""

import sys

from downloader.cli import main

if __name__ == "__main__":
    sys.exit(main())
