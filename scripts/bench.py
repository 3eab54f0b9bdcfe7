#!/usr/bin/env python
"""Speed and memory benchmark; same as `bizsre bench` (see `--help`)."""

import sys

from bizsre_tasks.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
