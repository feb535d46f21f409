"""Packaging glue pyproject.toml cannot express: the top-level configs/ ships as `advtrain.configs`.

The Hydra YAML stays at configs/ in the repository (where users and docs look for it) and is
installed as package data of `advtrain` (advtrain/configs/... in the wheel), found at run time
through the import system (advtrain.resources.config_dir), so a regular `pip install .` runs
`python -m advtrain train +exp=demo` from any directory. Everything else is in pyproject.toml;
benchmarks/ and tests/ stay out of the wheel.
"""

from setuptools import find_namespace_packages, find_packages, setup

#: The config groups (configs/attack, configs/exp, ...): YAML-only folders, hence namespace packages.
CONFIG_GROUPS = [f"advtrain.configs.{name}" for name in find_namespace_packages(where="configs")]

setup(
    packages=[
        *find_packages(include=["advtrain", "advtrain.*"]),
        "advtrain.configs",
        *CONFIG_GROUPS,
    ],
    package_dir={"advtrain.configs": "configs"},
    package_data={
        "advtrain": ["py.typed"],
        **{name: ["*.yaml"] for name in ["advtrain.configs", *CONFIG_GROUPS]},
    },
)
