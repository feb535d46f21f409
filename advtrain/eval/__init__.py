"""Evaluation: the library call (api.py: evaluate -> EvalResult), clean and PGD accuracy (evaluate.py), the real
AutoAttack (autoattack.py), pre-flight and red-flag checks (checks.py)."""
