"""Tensor helpers shared by the editing methods: head softmax, sentence encoders, running the body."""
