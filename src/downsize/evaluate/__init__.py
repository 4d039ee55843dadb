"""Evaluation: the specialist against the teacher's logged calls on held-out exchanges."""
