"""Knowledge-editing methods behind one protocol (see `base.py`); one module per method."""
