"""Tasks, evaluation sets and the sources they are read from."""

from .loading import eval_examples, stratified_subsample, train_pool
from .registry import DATASETS, EVAL_SETS, TASKS, get_eval_set, get_task
from .schema import DatasetDef, EvalSetDef, Example, LabelScheme, TaskDef
from .sources import SOURCES, load_split, resolve_data_dir, to_examples
from .user_tasks import build_user_task

__all__ = [
    "DATASETS", "EVAL_SETS", "SOURCES", "TASKS", "DatasetDef", "EvalSetDef", "Example", "LabelScheme",
    "TaskDef", "build_user_task", "eval_examples", "get_eval_set", "get_task", "load_split",
    "resolve_data_dir", "stratified_subsample", "to_examples", "train_pool",
]
