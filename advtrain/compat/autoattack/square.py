"""`autoattack.square` re-exported from pyautoattack (GitHub import path)."""

from pyautoattack.square import *  # noqa: F403
