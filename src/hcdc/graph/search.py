"""Optuna search over the polynomial-filter space, on a proxy or on the original graph.

What a user of hcdc does with a proxy: run the search they would have run on the full data (an
Optuna study over the filter coefficients λ, Akiba et al., KDD 2019) on the proxy instead, and
train the configuration it picks on the full data. Each trial's objective is the proxy's score of
:mod:`hcdc.graph.evaluate`: the validation loss on the proxy's validation nodes after training on
its training nodes with the evaluation protocol (on the original graph, the loss on its validation
nodes). Trials are asked ``batch`` at a time and trained as one stacked model
(:func:`hcdc.graph.train.score_configs`), so a batch costs about as much as one trial.

A study can be kept in an Optuna journal file: an interrupted search resumes from it, re-scoring
the trials that were running when it stopped (the sampler's random stream restarts, so a resumed
study need not repeat the trials an uninterrupted one would have drawn).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import optuna
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigError
from .space import FilterSpace, TrainProtocol
from .train import NodeGraph, score_configs

# name → Optuna sampler built from a seed; TPE uses the constant liar because trials are asked in batches
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler registered as ``name`` in :data:`SAMPLERS`, seeded."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name](seed)


@dataclass
class SearchResult:
    """The finished trials of a filter search in trial order and the best one (lowest validation loss)."""

    lam: Tensor  # [trials, K+1]
    val_loss: Tensor  # [trials]; inf for a failed (non-finite) trial
    seconds: float  # wall time of this call (for a resumed study, only the part run now)

    @property
    def best(self) -> Tensor:
        return self.lam[int(torch.argmin(self.val_loss))]

    @property
    def best_val_loss(self) -> float:
        return float(self.val_loss.min())

    def as_dict(self) -> dict:
        return {"lam": self.lam.tolist(), "val_loss": [v if math.isfinite(v) else None for v in self.val_loss.tolist()],
                "best": self.best.tolist(), "best_val_loss": self.best_val_loss, "seconds": self.seconds}


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)


def _open_study(config: dict, journal: str | Path | None) -> optuna.Study:
    """A new study, or the one kept in ``journal`` when it was made with the same ``config``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = None
    if journal is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        study = optuna.create_study(study_name="hcdc-filter-search", storage=storage, load_if_exists=True,
                                    direction="minimize", sampler=make_sampler(config["sampler"], config["seed"]))
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


def search_filters(graph: NodeGraph, space: FilterSpace, protocol: TrainProtocol, trials: int,
                   sampler: str = "tpe", seed: int = 0, batch: int = 16, evaluate_on: NodeGraph | None = None,
                   journal: str | Path | None = None, context: dict | None = None,
                   progress: bool = True) -> SearchResult:
    """Minimise the validation loss over λ ∈ ``space`` with an Optuna study of ``trials`` trials.

    ``graph`` is what each configuration trains on (a proxy's training block or the original graph)
    and ``evaluate_on`` what it is scored on (default ``graph``), as in :func:`score_configs`.
    ``journal``: an Optuna journal file that keeps the study, so that a rerun resumes it (with more
    ``trials`` it goes on); ``context`` (JSON-able, e.g. which proxy) joins the settings a resumed
    study must share with the one in the journal.
    """
    if trials < 1 or batch < 1:
        raise ConfigError(f"a search needs trials >= 1 and batch >= 1 (got {trials}, {batch})")
    start = time.perf_counter()
    names = [f"lambda_{k}" for k in range(space.dim)]
    study = _open_study({"sampler": sampler, "seed": seed, "batch": batch, "space": asdict(space),
                         "protocol": protocol.as_dict(), **(context or {})}, journal)
    # trials an interrupted run had asked but not told: score them first (their λ is in the study)
    pending = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    for t in [t for t in pending if set(t.params) != set(names)]:  # stopped between ask and suggest
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    queue = [(t.number, [t.params[n] for n in names]) for t in pending if set(t.params) == set(names)]
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    bar = tqdm(total=trials, initial=min(finished, trials), desc="search", unit="trial", disable=not progress)
    while queue or finished < trials:
        while len(queue) < batch and finished + len(queue) < trials:
            trial = study.ask()
            queue.append((trial.number, [trial.suggest_float(n, space.low, space.high) for n in names]))
        numbers, lam = [n for n, _ in queue], torch.tensor([v for _, v in queue])
        queue = []
        scores = score_configs(graph, lam, protocol, evaluate_on=evaluate_on)
        for number, loss in zip(numbers, scores.val_loss.tolist()):
            if math.isfinite(loss):
                study.tell(number, loss)
            else:
                study.tell(number, state=optuna.trial.TrialState.FAIL)
        finished += len(numbers)
        bar.update(len(numbers))
    bar.close()
    done = [t for t in study.get_trials(states=FINISHED) if set(t.params) == set(names)]
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in done):
        raise ConfigError("every trial of the search diverged (non-finite validation loss)")
    lam = torch.tensor([[t.params[n] for n in names] for t in done])
    loss = torch.tensor([t.value if t.state == optuna.trial.TrialState.COMPLETE else math.inf for t in done])
    return SearchResult(lam, loss, time.perf_counter() - start)


@dataclass
class Finalists:
    """The best trials of a search retrained on the original graph; the pick is the one whose validation
    accuracy there is highest (ties: the better proxy score), a cheap last step that hedges against a
    proxy's errors at the top of its ranking."""

    lam: Tensor  # [k, K+1], in the order of the search's validation loss
    val_acc: Tensor  # [k] on the original graph
    test_acc: Tensor  # [k]
    pick: int  # index into lam
    seconds: float  # training and scoring on the original graph

    def as_dict(self) -> dict:
        return {"lam": self.lam.tolist(), "val_acc": self.val_acc.tolist(), "test_acc": self.test_acc.tolist(),
                "pick": self.pick, "best": self.lam[self.pick].tolist(), "val_acc_of_pick": float(self.val_acc[self.pick]),
                "test_acc_of_pick": float(self.test_acc[self.pick]), "seconds": self.seconds}


def retrain_finalists(graph: NodeGraph, found: SearchResult, k: int,
                      protocol: TrainProtocol = TrainProtocol()) -> Finalists:
    """Train the ``k`` best finished trials of ``found`` on ``graph`` (the original graph, with its test
    nodes) under ``protocol`` (default: the ground truth's) and pick the best by validation accuracy."""
    if k < 1:
        raise ConfigError(f"finalists must be >= 1 (got {k})")
    order = torch.argsort(found.val_loss)[:k]
    lam = found.lam[order[torch.isfinite(found.val_loss[order])]]
    scores = score_configs(graph, lam, protocol)
    return Finalists(lam, scores.val_acc, scores.test_acc, int(torch.argmax(scores.val_acc)), scores.seconds)

