"""Which step drew each focus trial of a recorded study, and what it held when drawn.

``python -m benchmarks.draws STUDY_DIR`` reads the study's ``config.yaml``, ``trials.jsonl``
and Optuna journal, and replays its focus sampler (the sweep's seed, one worker) on the
study as it stood when each queued trial was taken: the trials completed before it
started, probes included, in the order they ran. ``trials.jsonl`` is sorted by number,
and the probes, numbered after the queue, run between queued trials: read in its order,
the causes named before a trial are not those its sampler saw. Per focus trial it prints
the step that drew it (``drawn_by`` where the study recorded it, else the replay's),
whether the replay drew the recorded values, the causes named, set aside and suspected
then, and which of them the trial holds.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(
        math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(a[k], float) else a[k] == b[k]
        for k in b
    )


def draws(study_dir: Path) -> list[str]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from nansearch.config import config_from_yaml
    from nansearch.factors import build_factors
    from nansearch.search import optuna_internals as private
    from nansearch.search.prober import probe_trial
    from nansearch.search.queue import DRAWN_ATTR, PHASE_ATTR, RESULT_ATTR, claimed, take
    from nansearch.search.records import read_trials
    from nansearch.search.set_aside import SetAsideSampler
    from nansearch.search.study import distributions, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = config_from_yaml((study_dir / "config.yaml").read_text(), str(study_dir / "config.yaml"))
    factors = build_factors(cfg)
    with tempfile.TemporaryDirectory() as tmp:  # Optuna may write to a journal it opens
        shutil.copyfile(study_dir / "optuna-journal.log", Path(tmp) / "journal.log")
        storage = JournalStorage(JournalFileBackend(str(Path(tmp) / "journal.log")))
        recorded = optuna.load_study(study_name=cfg.study, storage=storage)
        trials = {t.number: t for t in recorded.get_trials(deepcopy=False)}
    results = {r.number or 0: r for r in read_trials(study_dir / "trials.jsonl")}
    ran = sorted((trials[n].datetime_complete, n) for n in results if trials[n].datetime_complete)
    queued = [results[n] for n in sorted(results) if results[n].phase in ("cover", "focus")]

    sampler = make_sampler(cfg, sum(r.phase == "cover" for r in queued), cfg.seed, factors)
    assert isinstance(sampler, SetAsideSampler)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for r in queued:
        study.enqueue_trial(
            r.params if r.phase == "cover" else {}, user_attrs={PHASE_ATTR: r.phase}
        )
    dists = distributions(factors)
    host = types.SimpleNamespace(study=study, factors=factors)
    lines = []
    for _, number in ran:
        r = results[number]
        trial: optuna.Trial | None
        if r.phase == "cover":
            trial = take(study, dists)
        elif r.phase == "focus":
            frozen = next(claimed(study))
            space = sampler.infer_relative_search_space(study, frozen)
            step, params = sampler._choose(study, frozen, space)
            _, named, aside = sampler.known(study)
            store = private.storage(study)
            for name, dist in dists.items():
                store.set_trial_param(
                    private.trial_id(frozen), name, dist.to_internal_repr(r.params[name]), dist
                )
            trial = optuna.Trial(study, private.trial_id(frozen))
            step = trials[number].user_attrs.get(DRAWN_ATTR, {}).get("step", step)
            shown = {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in r.params.items()}
            held = {
                "named": [c.text for c in named if c.holds(r.params)],
                "set aside": [c.text for c in aside if c.holds(r.params)],
                "suspect": [c.text for c in sampler._suspects if c.holds(r.params)],
            }
            lines += [
                f"trial {number}: {step}, replayed {'the same' if _same(params, r.params) else 'other'}"
                f" values, {r.outcome}: {shown}",
                f"  named then: {', '.join(f'{c.text} {c.nan}/{c.total}' for c in named) or '-'};"
                f" set aside: {', '.join(c.text for c in aside) or '-'}",
                f"  holds: {'; '.join(f'{k} {v}' for k, v in held.items() if v) or 'none of them'}",
            ]
        else:
            trial = probe_trial(host, r.params, r.phase, r.origin)
        assert trial is not None
        trial.set_user_attr("outcome", r.outcome)
        trial.set_user_attr(RESULT_ATTR, r.to_json())
        if r.score is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, r.score)
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.draws STUDY_DIR", file=sys.stderr)
        return 2
    print("\n".join(draws(Path(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
