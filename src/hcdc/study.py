"""Batched Optuna studies that a rerun resumes: what ``hcdc search`` runs on any search space.

An Optuna study (Akiba et al., KDD 2019) whose trials are asked ``batch`` at a time and scored
together by one callable (a graph search trains a batch as one stacked model; an architecture
search trains them one after the other). The study can be kept in an Optuna journal file: an
interrupted search resumes from it, re-scoring the trials that were running when it stopped (the
sampler's random stream restarts, so a resumed study need not repeat the trials an uninterrupted
one would have drawn). The search spaces live beside their models: :mod:`hcdc.graph.search`
(filter coefficients) and :mod:`hcdc.image.search` (NAS-Bench-201 cells).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import optuna
from tqdm.auto import tqdm

from .errors import ConfigError

# name → Optuna sampler built from a seed; TPE uses the constant liar because trials are asked in batches
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)

Params = TypeVar("Params")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler registered as ``name`` in :data:`SAMPLERS`, seeded."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name](seed)


def open_study(name: str, config: dict, journal: str | Path | None, direction: str) -> optuna.Study:
    """A new study, or the one kept in ``journal`` when it was made with the same ``config``.

    ``config`` (JSON-able) must hold the ``sampler`` name and its ``seed``; a journal made with other
    settings is refused (ConfigError), as is a damaged one.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, storage = make_sampler(config["sampler"], config["seed"]), None  # a bad sampler fails before any file
    if journal is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=direction,
                                    sampler=sampler)
    except (ValueError, KeyError, TypeError) as exc:  # a damaged journal (JSONDecodeError is a ValueError)
        raise ConfigError(f"cannot read the study journal {journal}: {exc}; remove it to start afresh") from None
    kept = study.user_attrs.get("config")
    if kept is None:
        study.set_user_attr("config", config)
    elif kept != config:
        changed = sorted(k for k in set(kept) | set(config) if kept.get(k) != config.get(k))
        raise ConfigError(f"the study in {journal} was made with other settings ({', '.join(changed)}); "
                          "use another output or start it afresh")
    return study


def run_batched(name: str, config: dict, journal: str | Path | None, direction: str, trials: int, batch: int,
                names: Sequence[str], suggest: Callable[[optuna.Trial], Params], params_of: Callable[[dict], Params],
                score: Callable[[list[Params]], Sequence[float]], progress: bool = True,
                desc: str = "search") -> list[tuple[Params, float]]:
    """Open the study (:func:`open_study`, after checking the budget, so bad settings leave no journal) and
    run it until it has ``trials`` finished trials; return every finished trial's (params, value).

    ``suggest`` draws a trial's parameters (named ``names``) and returns them as ``Params``;
    ``params_of`` rebuilds ``Params`` from a stored trial's ``params`` dict (to re-score the trials an
    interrupted run had asked but not told); ``score`` maps a batch of ``Params`` to their objective
    values, a non-finite value marking a failed trial (value ``nan`` in the result). ConfigError when
    every trial failed.
    """
    if trials < 1 or batch < 1:
        raise ConfigError(f"a search needs trials >= 1 and batch >= 1 (got {trials}, {batch})")
    study = open_study(name, config, journal, direction)
    names = set(names)
    pending = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    for t in [t for t in pending if set(t.params) != names]:  # stopped between ask and suggest
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    queue = [(t.number, params_of(t.params)) for t in pending if set(t.params) == names]
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    bar = tqdm(total=trials, initial=min(finished, trials), desc=desc, unit="trial", disable=not progress)
    while queue or finished < trials:
        while len(queue) < batch and finished + len(queue) < trials:
            trial = study.ask()
            queue.append((trial.number, suggest(trial)))
        numbers, values = [n for n, _ in queue], score([p for _, p in queue])
        queue = []
        for number, value in zip(numbers, values):
            if math.isfinite(value):
                study.tell(number, value)
            else:
                study.tell(number, state=optuna.trial.TrialState.FAIL)
        finished += len(numbers)
        bar.update(len(numbers))
    bar.close()
    done = [t for t in study.get_trials(states=FINISHED) if set(t.params) == names]
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in done):
        raise ConfigError("every trial of the search failed or diverged (non-finite objective)")
    return [(params_of(t.params), t.value if t.state == optuna.trial.TrialState.COMPLETE else math.nan) for t in done]


__all__ = ["FINISHED", "SAMPLERS", "make_sampler", "open_study", "run_batched"]
