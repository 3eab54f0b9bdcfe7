"""Runs one sweep command as a child process, its output going to a log file, and reports how far
the child's per-case progress bar (`edited-hf ...: 40%|...| 12/30`) has got (0.0 until it shows)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Callable

CASE_PROGRESS = re.compile(r"edited-hf [^\r\n:]*:\s*\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)")
TAIL_CHARS = 4096


def run_logged(command: list[str], log_path: Path, on_progress: Callable[[float], None]) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        tail, fraction = "", 0.0
        try:
            while True:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                tail = (tail + chunk.decode("utf-8", errors="replace"))[-TAIL_CHARS:]
                matches = CASE_PROGRESS.findall(tail)
                if matches:
                    done, total = map(int, matches[-1])
                    fraction = done / total if total else 0.0
                # Called on every chunk, so the sweep's bar also refreshes its clock while a run loads.
                on_progress(fraction)
            return process.wait()
        except BaseException:
            # Ctrl-C or an error here: do not leave the child running.
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        finally:
            process.stdout.close()
