"""Evaluation: clean and PGD accuracy (evaluate.py), the real AutoAttack (autoattack.py)."""
