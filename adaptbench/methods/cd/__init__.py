"""Context distillation: the registered method (:mod:`.method`) and its parts -- the context and inputs
(:mod:`.context`), answer-position targets (:mod:`.labels`), sequence-level targets (:mod:`.sequence`,
:mod:`.sequence_run`) and the held-out measure of what the student recovered (:mod:`.heldout`)."""

from .labels import Teacher
from .method import ContextDistillation

__all__ = ["ContextDistillation", "Teacher"]
