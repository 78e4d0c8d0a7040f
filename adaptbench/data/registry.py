"""The built-in datasets, tasks and evaluation sets of the reference study, declared as data.

Label schemes follow the reference study (Mosbach et al., 2023): MNLI is made binary by dropping
neutral and mapping contradiction to 1 (``mnli``) or by merging neutral into non-entailment
(``mnli-original``), so that label 1 means "not entailed" for RTE, MNLI and HANS alike.
"""

from __future__ import annotations

from ..errors import DataError
from .formats import pair_tsv_reader, read_glue_cola, read_hans, read_paws_tsv
from .schema import DatasetDef, EvalSetDef, LabelScheme, OriginalFile, TaskDef

NLI3 = ("entailment", "neutral", "contradiction")


def _glue(folder: str, file: str) -> tuple[str, ...]:
    """Where a GLUE file may lie in a data folder: a GLUE download, lower-case, or ``original/``."""
    return (f"{folder}/{file}", f"{folder.lower()}/{file}", f"original/{folder.lower()}/{file}")


_rte_tsv = pair_tsv_reader(("sentence1",), ("sentence2",), ("label",), ("entailment", "not_entailment"),
                           ("sentence1", "sentence2"))
_mnli_tsv = pair_tsv_reader(("sentence1", "premise"), ("sentence2", "hypothesis"), ("gold_label",), NLI3,
                            ("premise", "hypothesis"))
_qqp_tsv = pair_tsv_reader(("question1",), ("question2",), ("is_duplicate",), ("0", "1"),
                           ("question1", "question2"))

DATASETS: dict[str, DatasetDef] = {}


def _add_dataset(d: DatasetDef) -> DatasetDef:
    if d.name in DATASETS:
        raise ValueError(f"dataset {d.name!r} registered twice")
    DATASETS[d.name] = d
    return d


RTE = _add_dataset(DatasetDef(
    "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("train", "validation"),
    hub=("nyu-mll/glue", "rte"),
    originals={"train": OriginalFile(_glue("RTE", "train.tsv"), _rte_tsv),
               "validation": OriginalFile(_glue("RTE", "dev.tsv"), _rte_tsv)}))
MNLI = _add_dataset(DatasetDef(
    "mnli", ("premise", "hypothesis"), NLI3, ("train", "validation_matched", "validation_mismatched"),
    hub=("nyu-mll/glue", "mnli"),
    originals={"train": OriginalFile(_glue("MNLI", "train.tsv"), _mnli_tsv),
               "validation_matched": OriginalFile(
                   (*_glue("MNLI", "dev_matched.tsv"),
                    # McCoy et al.'s complete copy of dev_matched (tommccoy1/hans, berts_of_a_feather/)
                    "original/mnli/mnli_development_set_number_of_correct_responses.txt"), _mnli_tsv),
               "validation_mismatched": OriginalFile(_glue("MNLI", "dev_mismatched.tsv"), _mnli_tsv)}))
QQP = _add_dataset(DatasetDef(
    "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("train", "validation"),
    hub=("nyu-mll/glue", "qqp"),
    originals={"train": OriginalFile(_glue("QQP", "train.tsv"), _qqp_tsv),
               "validation": OriginalFile(_glue("QQP", "dev.tsv"), _qqp_tsv)}))
COLA = _add_dataset(DatasetDef(
    "cola", ("sentence",), ("unacceptable", "acceptable"), ("train", "validation"),
    hub=("nyu-mll/glue", "cola"),
    originals={"train": OriginalFile(_glue("CoLA", "train.tsv"), read_glue_cola),
               "validation": OriginalFile(_glue("CoLA", "dev.tsv"), read_glue_cola)}))
COLA_OOD = _add_dataset(DatasetDef(
    "cola_ood", ("sentence",), ("unacceptable", "acceptable"), ("validation",),
    originals={"validation": OriginalFile(
        ("cola_ood/dev.tsv", "original/cola_ood/dev.tsv", "cola_public/raw/out_of_domain_dev.tsv",
         "original/cola_public/raw/out_of_domain_dev.tsv"), read_glue_cola)},
    note="the CoLA out-of-domain dev set (516 rows): out_of_domain_dev.tsv of the CoLA public release, "
         "or data/cola_ood/dev.tsv of github.com/uds-lsv/llmft"))
PAWS_QQP = _add_dataset(DatasetDef(
    "paws_qqp", ("sentence1", "sentence2"), ("not_paraphrase", "paraphrase"), ("validation",),
    originals={"validation": OriginalFile(
        ("paws_qqp/dev_and_test.tsv", "original/paws_qqp/dev_and_test.tsv"), read_paws_tsv)},
    note="PAWS-QQP dev+test (677 rows) as built by the reference study: data/paws_qqp/dev_and_test.tsv "
         "of github.com/uds-lsv/llmft (PAWS-QQP must be generated from QQP; it is not on the hub)"))
HANS = _add_dataset(DatasetDef(
    "hans", ("premise", "hypothesis"), ("entailment", "non-entailment"), ("validation",),
    hub=("jhu-cogsci/hans", None),
    originals={"validation": OriginalFile(
        ("hans/heuristics_evaluation_set.txt", "original/hans/heuristics_evaluation_set.txt",
         "hans/heuristics_evaluation_set.from_hans_zip.jsonl",
         "original/hans/heuristics_evaluation_set.from_hans_zip.jsonl"), read_hans)},
    meta_fields=("heuristic", "subcase", "template")))

# Label schemes. Same `space` = same label ids mean the same thing.
ENTAIL = "entailment-vs-not"
RTE_LABELS = LabelScheme(("entailment", "not_entailment"), (0, 1), ENTAIL)
MNLI_LABELS = LabelScheme(("entailment", "contradiction"), (0, None, 1), ENTAIL)
MNLI_ORIGINAL_LABELS = LabelScheme(("entailment", "non_entailment"), (0, 1, 1), ENTAIL)
HANS_LABELS = LabelScheme(("entailment", "non_entailment"), (0, 1), ENTAIL)
QQP_LABELS = LabelScheme(("not_duplicate", "duplicate"), (0, 1), "paraphrase")
COLA_LABELS = LabelScheme(("unacceptable", "acceptable"), (0, 1), "acceptability")

TASKS: dict[str, TaskDef] = {}
EVAL_SETS: dict[str, EvalSetDef] = {}


def register_task(task: TaskDef) -> TaskDef:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def register_eval_set(eval_set: EvalSetDef) -> EvalSetDef:
    if eval_set.name in EVAL_SETS:
        raise ValueError(f"eval set {eval_set.name!r} registered twice")
    EVAL_SETS[eval_set.name] = eval_set
    return eval_set


register_task(TaskDef("rte", RTE, "train", "validation", RTE_LABELS, "nli", ood=("hans",),
                      description="Recognising Textual Entailment (GLUE), 2 labels"))
register_task(TaskDef("mnli", MNLI, "train", "validation_matched", MNLI_LABELS, "nli",
                      ood=("hans", "mnli-mismatched"),
                      description="MultiNLI made binary as in the reference study: neutral removed, "
                                  "contradiction -> 1"))
register_task(TaskDef("mnli-original", MNLI, "train", "validation_matched", MNLI_ORIGINAL_LABELS, "nli",
                      ood=("hans", "mnli-original-mismatched"),
                      description="MultiNLI made binary by merging neutral into non-entailment"))
register_task(TaskDef("qqp", QQP, "train", "validation", QQP_LABELS, "paraphrase",
                      metrics=("accuracy", "f1"), ood=("paws-qqp",),
                      description="Quora Question Pairs (GLUE): duplicate or not"))
register_task(TaskDef("cola", COLA, "train", "validation", COLA_LABELS, "acceptability",
                      metrics=("accuracy", "mcc"), ood=("cola-ood",),
                      description="Corpus of Linguistic Acceptability (GLUE); validation = the GLUE dev "
                                  "file (1043 rows), as in the reference study"))

register_eval_set(EvalSetDef("hans", HANS, "validation", HANS_LABELS, slice_by=("heuristic",),
                             default_filter=(("heuristic", ("lexical_overlap",)),),
                             description="HANS (McCoy et al., 2019), 30k rows; by default the "
                                         "lexical_overlap heuristic, as in the reference study"))
register_eval_set(EvalSetDef("mnli-mismatched", MNLI, "validation_mismatched", MNLI_LABELS,
                             description="MNLI mismatched validation, binary as task mnli"))
register_eval_set(EvalSetDef("mnli-original-mismatched", MNLI, "validation_mismatched",
                             MNLI_ORIGINAL_LABELS,
                             description="MNLI mismatched validation, binary as task mnli-original"))
register_eval_set(EvalSetDef("paws-qqp", PAWS_QQP, "validation", QQP_LABELS, metrics=("accuracy", "f1"),
                             description="PAWS-QQP dev+test of the reference study (677 rows)"))
register_eval_set(EvalSetDef("cola-ood", COLA_OOD, "validation", COLA_LABELS, metrics=("accuracy", "mcc"),
                             description="CoLA out-of-domain dev (516 rows)"))


def get_task(name: str) -> TaskDef:
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} "
                        f"(or declare a task from your own files: see README, 'Your own task')") from None


def get_eval_set(name: str, task: TaskDef) -> EvalSetDef:
    """An eval set by name; ``validation`` (or the task's own name) is the task's in-domain split."""
    if name in ("validation", task.name):
        return task.validation
    if name not in EVAL_SETS:
        raise DataError(f"unknown eval set {name!r}; known: validation, {', '.join(EVAL_SETS)}")
    eval_set = EVAL_SETS[name]
    if eval_set.labels.space != task.labels.space:
        raise DataError(f"eval set {name!r} has labels {eval_set.labels.names} ({eval_set.labels.space}), "
                        f"which do not line up with task {task.name!r} {task.labels.names} "
                        f"({task.labels.space})")
    return eval_set
