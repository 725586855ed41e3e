"""Periodic retraining: read a recent window of the input topics, drop what the current model
flags, train a candidate, gate it against the current model, register and promote it."""
