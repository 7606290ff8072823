"""The teachers' former home: everything moved to :mod:`loftr_kd.teachers` (kept so that imports and the
``_target_`` paths in configs saved by earlier runs, ``loftr_kd.models.teacher.build_teacher``, still work)."""

from loftr_kd.teachers import *  # noqa: F403
from loftr_kd.teachers import __all__  # noqa: F401
