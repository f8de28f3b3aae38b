"""Reading Ascend profiler output into one classified tasks table.

Public API: `load_profiles(path, rules=None) -> list[Profile]`.
"""

from autotune.profile.tasks import ROLES, TASK_COLUMNS, Profile

__all__ = ["ROLES", "TASK_COLUMNS", "Profile"]
