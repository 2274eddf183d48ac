"""Tile groups: how many parts one cluster task carries.

Every task costs the same bookkeeping whatever its size (a broker message, its
acknowledgement, events, two store round trips), so small tiles are cheap only
when many travel together. A group is a run of consecutive part numbers
(:meth:`common.pipeline.JobPlan.group_parts`); progress stays per part.

The rule (:func:`group_size`): give each tile process about
:data:`GROUPS_PER_SLOT` groups of the image, enough that a fast host takes more
groups than a slow one (the split stays dynamic), few enough that the per-task
cost is paid rarely; and keep a group's estimated run time well within one
task's time limit, so a group of x4plus tiles on a CPU does not outlive it.
"""

from __future__ import annotations

import math

GROUPS_PER_SLOT = 3
"""Groups per tile process per image (a fast and a slow worker still balance at 3)."""

MAX_GROUP = 64
"""Most parts one task carries (bounds a task's memory and the work redone on a redelivery)."""

TIME_SHARE = 0.25
"""A group's estimated run time stays under this share of the task time limit."""


def group_size(
    parts: int,
    slots: int,
    window_pixels: int,
    seconds_per_megapixel: float,
    time_limit: float,
) -> int:
    """Parts per task for a job of ``parts`` parts with ``slots`` tile processes up.

    ``window_pixels`` is one window's area (what one part infers),
    ``seconds_per_megapixel`` the model's pessimistic cost
    (:attr:`common.models.ModelSpec.cpu_seconds_per_megapixel`) and ``time_limit``
    one task's time limit in seconds. Returns at least 1.
    """
    if parts <= 0:
        return 1
    balanced = math.ceil(parts / (max(1, slots) * GROUPS_PER_SLOT))
    per_part = window_pixels / 1e6 * seconds_per_megapixel
    timed = math.floor(time_limit * TIME_SHARE / per_part) if per_part > 0 else MAX_GROUP
    return max(1, min(balanced, timed, MAX_GROUP))
