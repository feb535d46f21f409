"""`autoattack.other_utils` re-exported from pyautoattack (GitHub import path)."""

from pyautoattack.other_utils import *  # noqa: F403
