"""`autoattack.state` for robustbench: re-exports pyautoattack's `EvaluationState` unchanged."""

from pyautoattack.state import EvaluationState

__all__ = ["EvaluationState"]
