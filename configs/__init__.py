"""advtrain's Hydra configs, installed as the package `advtrain.configs` (see setup.py).

This file only makes the folder an importable package, so `advtrain.resources.config_dir()` finds
the YAML through the import system in a wheel and in an editable checkout alike. Hydra reads only
the .yaml files.
"""
