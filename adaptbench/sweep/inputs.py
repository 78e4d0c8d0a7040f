"""From the names in a run spec to the objects they stand for: task, eval sets, prompt.

Done before any model is loaded, so bad input (unknown task, missing column, bad pattern) stops a
sweep at once with a clear message instead of failing every run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config.schema import EvalSetSpec, PromptSpec, RunSpec, RuntimeOptions
from ..data import build_user_task, eval_examples, get_eval_set, get_task, resolve_data_dir, train_pool
from ..data.schema import DatasetDef, EvalSetDef, Example, LabelScheme, TaskDef
from ..errors import DataError, PromptError
from ..methods import METHODS
from ..prompts.prompt import Prompt, check_prompt, preset


def resolve_task(run: RunSpec, config_dir: str) -> tuple[TaskDef, dict[str, EvalSetDef]]:
    if isinstance(run.task, str):
        return get_task(run.task), {}
    t = run.task
    return build_user_task(t.name, {"train": t.train, "validation": t.validation}, t.text_fields,
                           t.label_field, t.labels, t.ood, config_dir, t.hub, t.config, t.revision)


def resolve_prompt(spec: PromptSpec, task: TaskDef) -> Prompt:
    """The preset for the task's family, with any field the spec sets replaced (a custom pattern may be
    used where the family has no preset, if the verbalizer is given too)."""
    n_fields = len(task.dataset.fields)
    try:
        base = preset(spec.preset, task.family, n_fields)
    except PromptError:
        if spec.pattern is None:
            raise
        base = Prompt("")
    verbalizer = base.verbalizer
    if isinstance(spec.verbalizer, list):
        verbalizer = tuple(spec.verbalizer)
    elif isinstance(spec.verbalizer, dict):
        unknown = set(spec.verbalizer) - set(task.labels.names)
        missing = set(task.labels.names) - set(spec.verbalizer)
        if unknown or missing:
            raise PromptError(f"prompt.verbalizer must map each label of task {task.name!r} "
                              f"{list(task.labels.names)} to a word; unknown: {sorted(unknown)}, "
                              f"missing: {sorted(missing)}")
        verbalizer = tuple(spec.verbalizer[name] for name in task.labels.names)
    if not verbalizer:
        raise PromptError(f"task {task.name!r} has no preset verbalizer: set prompt.verbalizer "
                          f"(one single-token word per label {list(task.labels.names)})")
    given = {k: getattr(spec, k) for k in ("pattern", "target_prefix", "separator") if getattr(spec, k) is not None}
    prompt = replace(base, verbalizer=verbalizer, instruction=spec.instruction, **given)
    check_prompt(prompt, n_fields, task.labels.names)
    return prompt


@dataclass(frozen=True)
class EvalRequest:
    name: str
    eval_set: EvalSetDef
    where: tuple[tuple[str, tuple[str, ...]], ...] | None  # None: the set's default filter
    max_examples: int | None
    required: bool  # asked for by name; a default OOD set that cannot be loaded is only noted


def eval_requests(run: RunSpec, task: TaskDef, extra: dict[str, EvalSetDef]) -> list[EvalRequest]:
    spec = run.eval
    if spec.sets == "default":
        items = [EvalSetSpec(name="validation")] + [EvalSetSpec(name=n) for n in task.ood]
        required = [True] + [False] * len(task.ood)
    else:
        items = [EvalSetSpec(name=s) if isinstance(s, str) else s for s in spec.sets]
        required = [True] * len(items)
    out = []
    for item, req in zip(items, required):
        eval_set = extra.get(item.name) or get_eval_set(item.name, task)
        where = None
        if item.where is not None:
            where = tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in sorted(item.where.items()))
        out.append(EvalRequest(eval_set.name, eval_set, where, item.max_examples or spec.max_examples, req))
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise DataError(f"eval.sets lists an eval set twice: {names}")
    return out


@dataclass
class RunInputs:
    """The data of a run, loaded and validated."""

    task: TaskDef
    prompt: Prompt
    pool: list[Example]
    evals: list[tuple[EvalRequest, list[Example], str]]  # request, examples, origin
    unavailable: dict[str, str]  # default eval sets that could not be loaded -> why


# ``task: none``: a run with no classification data -- context distillation onto a file of inputs
# (cd.inputs), judged by what the student recovered of the context's effect, not by accuracy.
NO_TASK = TaskDef("none", DatasetDef("none", ("text",), (), ()), "train", "validation",
                  LabelScheme((), (), "none"), "text", metrics=(), description="no task: text inputs only")


def load_inputs(run: RunSpec, runtime: RuntimeOptions, config_dir: str) -> RunInputs:
    if run.task == "none":
        why = METHODS[run.method].task_needed(run)
        if why:
            raise DataError(f"task: none is for context distillation onto text inputs (method: cd, cd.target: "
                            f"sequence, cd.inputs: FILE); {why}")
        return RunInputs(NO_TASK, Prompt("", separator="\n\n"), [], [], {})
    task, extra = resolve_task(run, config_dir)
    prompt = resolve_prompt(run.prompt, task)
    data_dir = resolve_data_dir(runtime.data_dir)
    pool = train_pool(task, data_dir, runtime.data_source)
    evals, unavailable = [], {}
    for req in eval_requests(run, task, extra):
        try:
            examples, origin = eval_examples(req.eval_set, data_dir, runtime.data_source, req.where,
                                             req.max_examples, run.eval.seed)
        except DataError as e:
            if req.required:
                raise
            unavailable[req.name] = str(e)
            continue
        evals.append((req, examples, origin))
    return RunInputs(task, prompt, pool, evals, unavailable)
