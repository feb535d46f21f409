"""`autoattack.fab_pt` re-exported from pyautoattack (GitHub import path)."""

from pyautoattack.fab_pt import *  # noqa: F403
