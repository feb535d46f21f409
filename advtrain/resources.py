"""Files shipped with the package, found through the import system (never relative to a source file).

The Hydra configs live at configs/ in the repository and are installed as the package data
`advtrain.configs` (setup.py maps one onto the other): a wheel carries them under
site-packages/advtrain/configs, an editable install points the same name at the checkout's
configs/. Either way `importlib` knows where they are, so `advtrain` runs from any directory.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from advtrain.errors import ConfigError

__all__ = ["config_dir"]

#: Set to a folder laid out like configs/ to run with other configs (tests, forks).
CONFIG_DIR_ENV = "ADVTRAIN_CONFIG_DIR"


def config_dir() -> Path:
    """The folder of the Hydra configs: `$ADVTRAIN_CONFIG_DIR`, else the installed `advtrain.configs`."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    spec = importlib.util.find_spec("advtrain.configs")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location)
        if (path / "train.yaml").is_file():
            return path
    raise ConfigError(
        "advtrain's configs are not installed (no advtrain.configs package): reinstall advtrain "
        f"(`pip install .` or `pip install -e .`), or point {CONFIG_DIR_ENV} at a configs folder"
    )
