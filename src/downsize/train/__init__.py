"""Training: supervised distillation of the teacher's logged calls into specialists (torch inside functions)."""
