"""Experiment runners: sweeps over methods and languages, the training-scale study."""
