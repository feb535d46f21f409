"""`autoattack.autopgd_base` re-exported from pyautoattack (GitHub import path)."""

from pyautoattack.autopgd_base import *  # noqa: F403
