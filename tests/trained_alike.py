"""Do two training runs agree within round-off? (the distribution tests)

One device and several replicas or workers compute the same global-batch gradients in exact
arithmetic; in float32 they differ in summation order only: the batch is summed per replica and
then across replicas, and each kernel sums in its own order, which depends on the CPU (oneDNN
picks its kernels by vector width: AVX2, AVX-512, ...; Eigen blocks by cache size), on
``TF_ENABLE_ONEDNN_OPTS``, on the tensor shapes and on the number of threads. So two runs are
compared with a bound that follows from the arithmetic, not with one machine's round-off:

* The compared runs train with SGD with momentum. Its update is linear in the gradients: a
  relative error e in the gradients is a relative error e in the update. (Adam's is not: its
  first step lr * g / (|g| + epsilon) turns a round-off change of a gradient near 0 into one up
  to lr / epsilon = 1e4 times larger; four Adam steps differed by 5e-7 on an AVX2 machine and by
  1.2e-4 on an AVX-512 one, the size of a real error.)
* A gradient entry sums n ~ 10^4 products (16^3 voxels, 2 samples): in any order its round-off
  is at most ~n * 2^-24 ~ 6e-4 of the sum of the terms' sizes, typically ~sqrt(n) * 2^-24 ~ 6e-6;
  back-propagation through a few layers adds a few such errors.
* After every step each run rounds every stored variable (weights, momentum) to float32, a
  change of at most 2^-24 of its size: where a step's update is small next to the weights this
  is the larger part, and the next gradients amplify it (the normalised local gradients of the
  loss are ill-conditioned where an image is flat).

So for each group (a network, an optimizer's slots), ``||got - want|| <= RTOL * ||want - start||
+ 2 * steps * 2^-24 * ||want||``. Measured difference / bound, the same with and without
oneDNN: at most 5e-4 for two devices in one process; 0.07 for two workers with one thread each
(another summation order than the reference's, and a checkpoint restore in between); 0.18 with
every gradient entry multiplied by 1 + 1e-3 * N(0, 1) at every step of both runs (a stand-in for
round-off far larger than float32's).

What the comparison exists to catch changes the update by its own size (relative difference
~1): a loss averaged per replica and not over the global batch (``tf.reduce_mean`` in place of
``tf.nn.compute_average_loss``: every update doubled; measured difference / bound 28 to 112, in
every group), or a replica that trains on the wrong samples (the gradient of other data;
measured 13 to 87 in G's and T's groups, 1 to 3 in D's, whose gradient depends little on them).
"""

import numpy as np

#: Relative tolerance on the update: above the worst-case round-off of a few sums of 10^4 terms,
#: 100x below the errors it must catch.
RTOL = 1e-2
#: Half an ulp: float32 round-to-nearest changes a value by at most this fraction of its size.
FLOAT32_ROUNDING = 2.0**-24


def excess(got, want, start, steps, rtol=RTOL):
    """For each group of variables, its difference divided by the bound (at most 1: alike).

    :param got, want: ``{name: array}`` after ``steps`` steps of two runs; a group is the part of
        a name before the first "/" (a network, an optimizer); integers (step counters) must be
        equal
    :param start: ``{name: array}`` before the first step; a name absent here (an optimizer's
        slot) started at 0
    """
    assert got.keys() == want.keys()
    ratios = {}
    for group in sorted({name.split("/")[0] for name in want}):
        names = [n for n in want if n.split("/")[0] == group]
        floats = [n for n in names if np.issubdtype(np.asarray(want[n]).dtype, np.floating)]
        for name in set(names) - set(floats):
            assert np.array_equal(got[name], want[name]), f"{name}: {got[name]} != {want[name]}"
        if not floats:
            continue

        def flat(arrays):
            return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in arrays])

        a, b = flat(got[n] for n in floats), flat(want[n] for n in floats)
        before = flat(start.get(n, np.zeros_like(want[n])) for n in floats)
        update = np.linalg.norm(b - before)
        storage = 2 * steps * FLOAT32_ROUNDING * max(np.linalg.norm(b), np.linalg.norm(before))
        ratios[group] = np.linalg.norm(a - b) / (rtol * update + storage)
    return ratios


def assert_trained_alike(got, want, start, steps, rtol=RTOL):
    """``got`` and ``want`` are the same training within round-off (see the module docstring)."""
    ratios = excess(got, want, start, steps, rtol)
    shown = ", ".join(f"{group} {ratio:.3g}" for group, ratio in ratios.items())
    assert all(ratio <= 1 for ratio in ratios.values()), f"difference / bound per group: {shown}"
    return ratios
