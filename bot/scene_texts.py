"""What every surface says about scenes (start, who is present, add, remove, auto, end): the catalog's ``scenes``."""
from __future__ import annotations

from bot.i18n import section

SCENE_TEXTS = section("scenes")
