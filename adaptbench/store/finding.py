"""Finding a finished run by its folder or its id (a prefix, as the tables print it), for ``show``, ``export`` and
:func:`adaptbench.load_adapted`."""

from __future__ import annotations

import os

from ..errors import AdaptbenchError
from .record import RunRecord
from .records import RESULT
from .results import read_results

MIN_PREFIX = 4  # shortest run id prefix accepted (the tables print 8 characters)


def find_run(target: str, results_dir: str = "results") -> tuple[RunRecord, str, str] | list[RunRecord]:
    """(record, its sweep folder, a note) for a run folder, a sweep folder holding one run, or a run id
    (prefix) under ``results_dir``; the sweep's records when a folder holds several runs.  The note says
    where else the run is, when several sweeps hold it (they share its settings), or is empty."""
    if os.path.isfile(os.path.join(target, RESULT)):  # a run folder: <sweep>/runs/<id>
        sweep = os.path.dirname(os.path.dirname(os.path.abspath(target)))
        return _one(read_results(sweep), os.path.basename(os.path.normpath(target)), sweep)
    if os.path.isdir(target):
        results = read_results(target)
        if len(results.records) == 1:
            return _one(results, results.records[0].run_id, target)
        if not results.records:
            raise AdaptbenchError(f"{target}: no finished run in this folder")
        return results.records
    if len(target) < MIN_PREFIX or not all(c in "0123456789abcdef" for c in target.lower()):
        raise AdaptbenchError(f"{target!r} is neither a folder nor a run id (a run id: {MIN_PREFIX}+ hex characters, "
                              f"as in the tables)")
    if not os.path.isdir(results_dir):
        raise AdaptbenchError(f"run {target}: no results folder {results_dir!r} to look in (use --results-dir)")
    return _one(read_results(results_dir), target.lower(), results_dir)


def _one(results, prefix: str, where: str) -> tuple[RunRecord, str, str]:
    hits = [r for r in results.records if r.run_id.startswith(prefix)]
    if not hits:
        raise AdaptbenchError(f"no finished run {prefix} under {where}")
    if len({r.run_id for r in hits}) > 1:
        raise AdaptbenchError(f"run id {prefix} is ambiguous under {where}: "
                              + ", ".join(sorted(r.run_id[:12] for r in hits)))
    sweeps = results.found_in.get(hits[0].run_id) or [os.path.join(where, hits[0].sweep or "")]
    note = (f"run {hits[0].run_id} is in {len(sweeps)} sweeps ({', '.join(sweeps)}): they share its settings; "
            f"showing the copy in {sweeps[0]}") if len(sweeps) > 1 else ""
    return hits[0], sweeps[0], note
