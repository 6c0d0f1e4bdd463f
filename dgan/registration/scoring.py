"""Choosing the starting field phi_0 by the objective on the pair itself.

A trained T (Zhang et al. 2020, arXiv:2002.11430) predicts phi in one pass, but only for inputs like
its training data: on a whole head, a slab or a spinal cord a brain-trained T can predict
displacements of centimetres. The block matching (:mod:`dgan.core.matching`) has no weights to
mislead, but on a pair its headers already align it still moves voxels by its search's noise.
Neither is trusted blindly: each candidate field (the identity, the matching's, T's) is scored by
the modality-independent local-gradient similarity L_LG(R, F(phi)) of the paper, as the mean over
the voxels where both scans have data (:mod:`dgan.core.coverage`); a field is followed only when it
beats the identity by :data:`MARGIN` and does not fold (:data:`MAX_FOLDING`): a field has to earn
its displacement.

T's field also answers for its input: T refines the block matching's field with a learned residual,
so where that matching folds (a pair unlike T's training data: a whole head, a slab, a spinal cord;
on the brain pairs T is trained on it does not fold), T's field is built on a search that failed and
is not followed either, however well it scores: a network can score well on the similarity it was
trained to raise while moving anatomy that a plain search could not place.
"""

import dataclasses

import numpy as np

from ..compat import tf
from ..core import coverage, losses, metrics
from ..core.spatial import grid_axes, warp_batch
from .settings import XLA_MIN_VOXELS, compiles_with_xla

#: The L_LG window of the score (voxels of the scoring grid).
SCORE_WINDOW = 3
#: How much higher a candidate must score than the identity (L_LG lies in [0, 1]), and how
#: much higher an earlier candidate must score to beat a later one.
MARGIN = 0.01
#: A candidate whose field folds (det(I + grad phi) <= 0) at more than this fraction of voxels
#: is not followed: a search that had too little structure to go by (a volume a few coarse
#: voxels across, a thin slab) folds, and refinement keeps what it starts from.
MAX_FOLDING = 0.005


@dataclasses.dataclass(frozen=True)
class Choice:
    """What :func:`choose` decided.

    :param name: the chosen candidate's name
    :param scores: every candidate's score, {name: L_LG on the overlap}, in the order tried
    :param folding: every candidate's fraction of voxels with det(I + grad phi) <= 0
    :param builds_on: {name: the candidate it builds on}, for candidates not followed because
        the one they build on folds
    """

    name: str
    scores: dict
    folding: dict = dataclasses.field(default_factory=dict)
    builds_on: dict = dataclasses.field(default_factory=dict)

    def describe(self):
        """One line for the user: the choice and every score."""
        def remark(name):
            if self.folding.get(name, 0) > MAX_FOLDING:
                return f" (folds {100 * self.folding[name]:.1f}%)"
            if name in self.builds_on:
                return f" (builds on the {self.builds_on[name]}, which folds)"
            return ""
        listed = ", ".join(f"{name} {score:.4f}{remark(name)}"
                           for name, score in self.scores.items())
        return (f"start: {self.name} (L_LG on the overlap: {listed}; a field must gain "
                f"{MARGIN:g} over the identity and fold at most {100 * MAX_FOLDING:g}% of voxels)")


def score_weight(mask):
    """The weights of :func:`lg_score` for an overlap ``mask`` (bool, the scoring grid): the
    voxels whose L_LG window lies inside it (:func:`dgan.core.coverage.level_weights`), or None (all
    of them, also when ``mask`` is None)."""
    if mask is None:
        return None
    weight = coverage.level_weights(mask, 1, SCORE_WINDOW // 2 + 1)
    return None if weight is None else weight[0]


def lg_score(moving, fixed, flow, weight=None):
    """L_LG(R, F(phi)) on one grid, the mean over ``weight`` (weights of mean 1, or None: all).

    A registration scores three to five fields on one grid; on grids of at least
    :data:`dgan.registration.settings.XLA_MIN_VOXELS` voxels the score runs as one program
    compiled by XLA (the compile cache keeps it), about three times faster than op by op; on
    smaller ones op by op (a compilation would cost more than it saves).

    :param moving: F, shape = (X, Y, Z), scaled
    :param fixed: R, shape = (X, Y, Z), scaled
    :param flow: phi, shape = (X, Y, Z, 3), voxels, or None: the identity
    :param weight: shape = (X, Y, Z) or None (:func:`dgan.core.coverage.weights`)
    :return: a float in [0, 1]
    """
    shape = np.shape(moving)
    flow = np.zeros(shape + (3,), np.float32) if flow is None else flow  # warps exactly
    weight = np.ones(shape, np.float32) if weight is None else weight  # the plain mean
    score = _compiled_score if compiles_with_xla("auto", shape, XLA_MIN_VOXELS) else _score
    return float(score(*(tf.constant(np.asarray(a, np.float32)[np.newaxis]) for a in
                         (moving, fixed, flow, weight)), grid_axes(shape)))


def _score(moving, fixed, flow, weight, axes):
    """:func:`lg_score` on tensors (1, X, Y, Z), (1, X, Y, Z), (1, X, Y, Z, 3), (1, X, Y, Z), and
    the grid's :func:`dgan.core.spatial.grid_axes` (inputs, not constants: see
    :func:`dgan.core.spatial.grid_from_axes`)."""
    direction = losses.local_gradient_direction(fixed[..., tf.newaxis], SCORE_WINDOW)
    moved = warp_batch(moving[..., tf.newaxis], flow, axes)
    return losses.local_gradient_agreement(direction, moved, SCORE_WINDOW, weight=weight)[0]


_compiled_score = tf.function(_score, autograph=False, jit_compile=True)


def choose(moving, fixed, candidates, weight=None, builds_on=None):
    """The candidate field to start from. ``candidates`` list the identity first, then fields
    from the simplest to the most elaborate (the matching's, T's). A field is eligible when it
    scores at least :data:`MARGIN` above the identity, does not fold, and the candidate it
    builds on (``builds_on``) does not fold either; of the eligible ones the last listed is
    chosen unless an earlier one scores :data:`MARGIN` above it; with none eligible, the
    identity.

    :param candidates: [(name, flow (X, Y, Z, 3) or None for the identity), ...]
    :param builds_on: {name: name of an earlier candidate it refines}, e.g. {"T": "matching"}
    :return: (:class:`Choice`, the chosen flow or None)
    """
    scores = {name: lg_score(moving, fixed, flow, weight) for name, flow in candidates}
    folding = {name: 0.0 if flow is None else metrics.folding_fraction(flow)
               for name, flow in candidates}
    unfounded = {name: base for name, base in (builds_on or {}).items()
                 if name in folding and folding[base] > MAX_FOLDING}
    (first, _), *others = candidates
    eligible = [(name, flow) for name, flow in others
                if scores[name] >= scores[first] + MARGIN and folding[name] <= MAX_FOLDING
                and name not in unfounded]
    best = (first, None)
    for name, flow in eligible:
        if best[0] == first or scores[name] > scores[best[0]] - MARGIN:
            best = (name, flow)
    return Choice(name=best[0], scores=scores, folding=folding, builds_on=unfounded), best[1]
