"""`autoattack.checks` re-exported from pyautoattack (GitHub import path)."""

from pyautoattack.checks import *  # noqa: F403
