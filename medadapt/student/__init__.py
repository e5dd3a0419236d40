"""The specialist student: a MONAI segmentation network distilled from the adapted foundation model.

* :mod:`.config` -- :class:`StudentConfig`, the ``distill.student:`` section.
* :mod:`.network` -- :class:`Student`: the network with its own pre- and post-processing.
* :mod:`.io` -- :func:`save_student` / :func:`load_student` (safetensors).

``medadapt distill RUN`` (:mod:`medadapt.ssl.distill`) trains one into ``RUN/student/``;
:class:`medadapt.inference.Segmenter` then answers automatic predictions with it.
"""

from .config import NETWORKS, TTA, StudentConfig
from .io import has_student, load_student, read_student_info, save_student
from .network import Student, build_network, context_stack, grey_stack, normalise, to_input, to_target

__all__ = [
    "NETWORKS", "Student", "StudentConfig", "TTA", "build_network", "context_stack", "grey_stack", "has_student", "load_student",
    "normalise", "read_student_info", "save_student", "to_input", "to_target",
]
