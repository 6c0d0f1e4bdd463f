"""Held-out Dice during training, through the registration code, and its log ``validation.csv``.

:func:`score_pairs` registers validation pairs as ``dgan-register`` does
(:class:`dgan.registration.registrar.Registrar`): T alone and, when asked, T + refinement.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import metrics
from ..data import synth

@dataclass
class Scores:
    """Validation mean Dice of one check.

    :param identity: before registration
    :param network: T's field alone
    :param refined: T's field refined on each pair (:mod:`dgan.registration.refine`), or None when
        not run
    :param first: the first pair's ``fixed``, ``moving``, ``moved``, ``flow`` (the registered
        one) and ``fixed_labels``, for the figure
    """

    identity: float
    network: float
    refined: float | None
    first: dict

    @property
    def registered(self):
        """The registration's result: refined when refinement ran, else T's."""
        return self.network if self.refined is None else self.refined


def score_pairs(model, pairs, refine_config=None):
    """Register each pair through :class:`dgan.registration.registrar.Registrar` (the code behind
    ``dgan-register``), with T alone and, when ``refine_config.steps`` > 0, with refinement;
    Dice of the warped moving labels against the fixed labels.

    :param model: a :class:`dgan.registration.model_folder.ModelFolder` (in memory during training)
        or folder path
    :param pairs: dicts ``moving``, ``fixed`` (X, Y, Z) and their ``*_labels``
    :param refine_config: :class:`dgan.registration.settings.RefineConfig`, or None for T alone
    :return: :class:`Scores`
    """
    from ..registration.registrar import Registrar

    steps = 0 if refine_config is None else refine_config.steps
    registrar = Registrar(model, refine_steps=steps, refine_config=refine_config)
    moving = np.stack([p["moving"] for p in pairs])
    fixed = np.stack([p["fixed"] for p in pairs])
    flows = registrar.predict_flow(moving, fixed)  # (B, X, Y, Z, 3)
    refined = registrar.refine_flows(moving, fixed, flows) if steps else None

    def dice(flow_batch):
        return float(np.mean([
            metrics.mean_dice(synth.warp(p["moving_labels"], flow, order=0), p["fixed_labels"])
            for p, flow in zip(pairs, flow_batch)]))

    identity = float(np.mean([metrics.mean_dice(p["moving_labels"], p["fixed_labels"])
                              for p in pairs]))
    flow = flows[0] if refined is None else refined[0]
    first = {
        "fixed": pairs[0]["fixed"], "moving": pairs[0]["moving"],
        "moved": synth.warp(pairs[0]["moving"], flow), "flow": flow,
        "fixed_labels": pairs[0]["fixed_labels"],
    }
    return Scores(identity, dice(flows), None if refined is None else dice(refined), first)


#: Held-out Dice at every check: step, identity, network (T alone), refined (blank if not run).
VALIDATION_CSV = "validation.csv"
_VALIDATION_COLUMNS = ("step", "identity", "network", "refined")


def append_validation_row(path, step, scores):
    """Append one check's :class:`Scores` to ``validation.csv`` (header first)."""
    new = not Path(path).exists()
    with open(path, "a", newline="") as handle:
        out = csv.writer(handle)
        if new:
            out.writerow(_VALIDATION_COLUMNS)
        refined = "" if scores.refined is None else f"{scores.refined:.6f}"
        out.writerow([step, f"{scores.identity:.6f}", f"{scores.network:.6f}", refined])


def read_validation_history(path):
    """``validation.csv`` -> {"identity"|"network"|"refined": [(step, Dice), ...]}."""
    history = {name: [] for name in _VALIDATION_COLUMNS[1:]}
    if not Path(path).exists():
        return history
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for name in history:
                if row.get(name):
                    history[name].append((int(row["step"]), float(row[name])))
    return history
