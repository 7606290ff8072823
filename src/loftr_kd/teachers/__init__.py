"""Frozen teachers for distillation; each declares what it provides (:mod:`loftr_kd.teachers.base`).

- :class:`LoFTRTeacher` (``teacher=loftr_outdoor``): kornia's LoFTR outdoor "ds" from a local
  checkpoint — coarse similarity at stride 8 and fine matches.
- :class:`StudentTeacher` (``teacher=student``): a trained student — coarse similarity on its grid.
"""

from loftr_kd.teachers.base import (
    FINE,
    MATCHES,
    SIMILARITY,
    FrozenTeacher,
    TeacherFine,
    TeacherMatches,
    TeacherOutput,
    teacher_coarse_matches,
)
from loftr_kd.teachers.loftr import (
    CHECKPOINT_SOURCES,
    KNOWN_CHECKPOINT_NAMES,
    KORNIA_OUTDOOR_TEMP_BUG_FIX,
    LoFTRTeacher,
    TeacherCheckpointError,
    TeacherCheckpointNotFound,
    build_teacher,
    find_teacher_checkpoint,
    infer_temp_bug_fix,
    load_teacher,
    outdoor_ds_config,
    read_loftr_state_dict,
)
from loftr_kd.teachers.student import StudentTeacher, build_student_teacher

__all__ = [
    "CHECKPOINT_SOURCES",
    "FINE",
    "KNOWN_CHECKPOINT_NAMES",
    "KORNIA_OUTDOOR_TEMP_BUG_FIX",
    "MATCHES",
    "SIMILARITY",
    "FrozenTeacher",
    "LoFTRTeacher",
    "StudentTeacher",
    "TeacherCheckpointError",
    "TeacherCheckpointNotFound",
    "TeacherFine",
    "TeacherMatches",
    "TeacherOutput",
    "build_student_teacher",
    "build_teacher",
    "find_teacher_checkpoint",
    "infer_temp_bug_fix",
    "load_teacher",
    "outdoor_ds_config",
    "read_loftr_state_dict",
    "teacher_coarse_matches",
]
