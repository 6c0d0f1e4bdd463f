"""Speed and memory of registering one pair and of one training step, method against method.

:func:`bench_inference` times the forward pass of Deform-GAN's T (Zhang et al. 2020,
arXiv:2002.11430) against VoxelMorph's VxmDense with the same U-Net (and ANTs SyN, when given);
:func:`bench_training_step` times one training step of Deform-GAN (D, G and T) against one of
VxmDense (:class:`dgan.training.baselines.VxmTrainer`). Every figure is the median time and the peak
memory of :func:`dgan.core.metrics.measure`, each method in a fresh process by default
(:func:`in_fresh_process`). The command line is ``dgan-bench-speed``
(:mod:`dgan.bench.bench_speed`).
"""

import concurrent.futures
import multiprocessing

import numpy as np

from ..compat import keras, tf
from ..core import metrics
from ..core.networks import build_registration_net
from ..errors import InputError
from ..evaluation.methods import AntsSyNMethod, import_ants
from ..training.baselines import VxmTrainer, build_vxm_dense
from ..training.trainers import DeformGAN


# --- speed and memory --------------------------------------------------------------------------


def measurement_record(measurement):
    """A :class:`dgan.core.metrics.Measurement` as a JSON-ready dict; ``added_mib`` = peak -
    baseline, what the method's warm-up (building, tracing) and timed calls added to the process."""
    added = (None if measurement.baseline_mib is None
             else measurement.peak_mib - measurement.baseline_mib)
    return {"seconds": measurement.seconds, "times": list(measurement.times),
            "peak_mib": measurement.peak_mib, "added_mib": added,
            "memory_source": measurement.memory_source}


def in_fresh_process(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a new Python process (``spawn``), its result returned.

    A benchmark measures each method in its own process: memory that one method's run freed
    stays with the process (allocator caches) and would be reused by the next, which would
    then seem to need nothing. ``fn`` and its arguments must be picklable (module-level).
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _run(isolate, fn, *args, **kwargs):
    return in_fresh_process(fn, *args, **kwargs) if isolate else fn(*args, **kwargs)


def _lazy(build):
    """A callable that builds ``build()`` (a function of no arguments) on its first call, inside
    :func:`dgan.core.metrics.measure`'s memory window, then calls it: ``lazy()`` ->
    ``build()()``."""
    built = []

    def call():
        if not built:
            built.append(build())
        return built[0]()

    return call


def _inference_forward(kind, network_config, moving, fixed):
    """One registration network's forward pass on (1, X, Y, Z, 1) inputs, as a function of no
    arguments returning the flow (NumPy); ``kind`` ``"dgan"`` (T) or ``"vxm"`` (VxmDense)."""
    moving_in = tf.constant(np.asarray(moving, np.float32)[None, ..., None])
    fixed_in = tf.constant(np.asarray(fixed, np.float32)[None, ..., None])
    if kind == "dgan":
        net = build_registration_net(network_config)
        forward = tf.function(lambda m, f: net({"moving": m, "fixed": f}, training=False)["flow"])
    else:
        net = build_vxm_dense(network_config)
        forward = tf.function(lambda m, f: net([m, f], training=False)[1])
    return lambda: forward(moving_in, fixed_in).numpy()


def _bench_network(kind, network_config, moving, fixed, repeats, warmup):
    """:func:`measurement_record` of one network's inference, built in the memory window."""
    _, measurement = metrics.measure(
        _lazy(lambda: _inference_forward(kind, network_config, moving, fixed)),
        repeats=repeats, warmup=max(1, warmup))
    return measurement_record(measurement)


def _bench_ants(moving, fixed, spacing, settings, repeats):
    """:func:`measurement_record` of whole ANTs SyN registrations (no warm-up)."""
    ants, reason = import_ants()
    if ants is None:
        raise InputError(reason)
    method = AntsSyNMethod(ants, **settings)
    _, measurement = metrics.measure(method.flow, moving, fixed, spacing, repeats=repeats,
                                     warmup=0)
    return measurement_record(measurement)


def bench_inference(network_config, moving, fixed, spacing=(1.0, 1.0, 1.0), repeats=3, warmup=1,
                    ants=None, ants_settings=None, ants_repeats=1, isolate=True):
    """Median time and peak memory of registering one pair (network forward pass only).

    Deform-GAN's T (:func:`dgan.core.networks.build_registration_net`) and VoxelMorph's VxmDense
    (:func:`dgan.training.baselines.build_vxm_dense`, the same U-Net) run on ``(1, X, Y, Z, 1)``
    inputs through a ``tf.function`` (traced in the warm-up); ANTs SyN (when ``ants`` is given) runs
    :meth:`AntsSyNMethod.flow` on the same arrays. Each network is built in the first warm-up call,
    inside the memory window (:func:`dgan.core.metrics.measure`), so ``added_mib`` counts its
    weights, graph and activations; times are the timed calls only.

    :param network_config: :class:`dgan.core.networks.NetworkConfig` with ``shape`` = moving.shape
    :param spacing: the arrays' voxel size in mm (for ANTs)
    :param ants: the ``ants`` module, or None to leave ANTs out
    :param ants_settings: changes to :data:`ANTS_DEFAULTS`
    :param ants_repeats: timed ANTs registrations (no warm-up: nothing to trace)
    :param isolate: measure each method in a fresh process (:func:`in_fresh_process`); False
        runs them one after the other in this process, where a later method reuses memory an
        earlier one freed
    :return: ``{method name: {"seconds", "times", "peak_mib", "added_mib", "memory_source"}}``
    """
    out = {}
    for name, kind in (("Deform-GAN T", "dgan"), ("VoxelMorph VxmDense", "vxm")):
        out[name] = _run(isolate, _bench_network, kind, network_config, moving, fixed, repeats,
                         warmup)
    if ants is not None:
        out[AntsSyNMethod.name] = _run(isolate, _bench_ants, moving, fixed, spacing,
                                       dict(ants_settings or {}), ants_repeats)
    return out


def _training_step(kind, network_config, moving, fixed, loss):
    """One training step (batch size 1) as a function of no arguments returning its loss;
    ``kind`` ``"dgan"`` (Deform-GAN's D, G, T) or ``"vxm"`` (VxmDense with ``loss``)."""
    batch = {"moving": tf.constant(np.asarray(moving, np.float32)[None, ..., None]),
             "fixed": tf.constant(np.asarray(fixed, np.float32)[None, ..., None])}
    if kind == "dgan":
        model = DeformGAN.from_config_object(network_config)
        model.compile(t_optimizer=keras.optimizers.Adam(1e-4),
                      g_optimizer=keras.optimizers.Adam(1e-4),
                      d_optimizer=keras.optimizers.Adam(1e-4))
        step = tf.function(model.train_step)
        return lambda: float(step(batch)["t_loss"])
    trainer = VxmTrainer.from_config_object(network_config)
    trainer.compile(t_optimizer=keras.optimizers.Adam(1e-4), weights=loss)
    step = tf.function(trainer.train_step)
    return lambda: float(step(batch)["t_loss"])


def _bench_training(kind, network_config, moving, fixed, repeats, warmup, loss):
    """:func:`measurement_record` of one training step, model built in the memory window."""
    _, measurement = metrics.measure(
        _lazy(lambda: _training_step(kind, network_config, moving, fixed, loss)),
        repeats=repeats, warmup=max(1, warmup))
    return measurement_record(measurement)


def bench_training_step(network_config, moving, fixed, repeats=3, warmup=1, loss=None,
                        isolate=True):
    """Median time and peak memory of one training step at ``network_config.shape``.

    Deform-GAN: :meth:`dgan.training.trainers.DeformGAN.train_step` (D, then G, then T, three Adam
    updates); VoxelMorph: one step of :class:`dgan.training.baselines.VxmTrainer` with ``-MI +
    lambda * Grad_l2`` (one Adam update; ``loss``: a :class:`dgan.training.trainers.LossWeights`,
    None: the defaults). Both in a ``tf.function``, batch size 1, the model built in the first
    warm-up call, inside the memory window; each in a fresh process unless ``isolate`` is False (see
    :func:`bench_inference`).

    :return: ``{"Deform-GAN (D+G+T)": {...}, "VoxelMorph VxmDense (MI)": {...}}``
    """
    return {name: _run(isolate, _bench_training, kind, network_config, moving, fixed, repeats,
                       warmup, loss)
            for name, kind in (("Deform-GAN (D+G+T)", "dgan"), ("VoxelMorph VxmDense (MI)", "vxm"))}
