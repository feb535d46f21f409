"""Export to RobustBench: the library call (api.py: export -> ExportResult); zoo checkpoint, leaderboard
`model_info` JSON, submission text and their checks (robustbench.py)."""

from advtrain.export.robustbench import (
    LEADERBOARD_EPS,
    MODEL_INFO_KEYS,
    ExportError,
    build_model_info,
    export_state_dict,
    robustbench_constructor,
    validate_model_info,
)

__all__ = [
    "LEADERBOARD_EPS",
    "MODEL_INFO_KEYS",
    "ExportError",
    "build_model_info",
    "export_state_dict",
    "robustbench_constructor",
    "validate_model_info",
]
