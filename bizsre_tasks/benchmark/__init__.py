"""The speed and memory benchmark (`bizsre bench`, `scripts/bench.py`)."""
