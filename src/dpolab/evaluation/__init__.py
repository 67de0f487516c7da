"""Evaluation: generation, judges, win rates, downstream tasks, forgetting."""
