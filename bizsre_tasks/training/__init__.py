"""Training of the editors that need it (SERAC's scope classifier, MEND's hypernetwork) and their
shared checkpoint folder format (`checkpoints.py`). Run through `bizsre train serac|mend`."""
