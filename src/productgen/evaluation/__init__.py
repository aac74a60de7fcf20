"""Evaluation: one module per task family (generation, restoration, translation, style), the dispatcher the task
registry points at, and the per-category helpers they share."""
