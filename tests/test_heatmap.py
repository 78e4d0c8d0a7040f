"""The needle-in-a-haystack heat map's cells: k/n per length x depth, pooled over runs, each reply once."""

from __future__ import annotations

from adaptbench.report.heatmap import _cells, niah_heatmaps
from adaptbench.store.record import load_record


def _estimate(k: int, n: int) -> dict:
    return {"value": k / n, "n": n, "k": k, "ci95": [0.0, 1.0], "interval": "wilson"}


def _record(run_id: str, trainable: str, length: int, student: list[bool], teacher: list[bool]) -> object:
    """A NIAH run's record: two questions at depth 0, one at depth 1; base never answers."""
    depths = [0.0, 0.0, 1.0]
    rows = [{"input": f"q{i}", "depth": d, "base": "no", "teacher": "42" if teacher[i] else "no",
             "student": "42" if student[i] else "no"} for i, d in enumerate(depths)]
    groups = {}
    for d in ("0.0", "1.0"):
        idx = [i for i, x in enumerate(depths) if str(x) == d]
        groups[d] = {"contains": {"base": _estimate(0, len(idx)), "teacher": _estimate(sum(teacher[i] for i in idx), len(idx)),
                                  "student": _estimate(sum(student[i] for i in idx), len(idx))}}
    return load_record({"run_id": run_id, "status": "ok", "spec": {"model": {"name": "m"}, "method": "cd",
                                                                     "trainable": trainable},
                        "method_info": {"context_tokens": length, "judged": {"n": 3, "reply_tokens": 8,
                                                                             "groups": {"depth": groups},
                                                                             "replies": rows}}})


def test_students_of_one_context_do_not_count_the_base_and_teacher_twice(tmp_path):
    teacher = [True, False, True]
    records = [_record("a", "lora", 100, [False, False, False], teacher),
               _record("b", "cartridge", 100, [True, False, False], teacher),
               _record("c", "lora", 200, [False, False, True], [False, False, False])]
    cells = _cells(records)["m"]
    assert cells["teacher"][(100, 0.0)] == [1, 2] and cells["teacher"][(100, 1.0)] == [1, 1]  # once, not [2, 4]
    assert cells["base"][(100, 0.0)] == [0, 2] and cells["base"][(200, 1.0)] == [0, 1]
    assert cells["student (lora)"][(200, 1.0)] == [1, 1] and cells["student (cartridge)"][(100, 0.0)] == [1, 2]
    # another run with other replies to the same questions (another seed's teacher) is pooled
    other = _record("d", "lora", 100, [False] * 3, [False, False, False])
    assert _cells(records + [other])["m"]["teacher"][(100, 0.0)] == [1, 4]
    [(caption, paths)] = niah_heatmaps(records, str(tmp_path))
    assert "counted once" in caption and all(p.endswith((".png", ".svg")) for p in paths)
