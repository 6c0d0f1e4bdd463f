"""Registering a pair: the ``Registrar`` behind ``dgan-register``, and what it is made of.

| module | one job |
|---|---|
| :mod:`~dgan.registration.registrar` | :class:`~dgan.registration.registrar.Registrar`: affine
stage, T, refinement, on the scans' grids |
| :mod:`~dgan.registration.geometry` | fields and volumes between voxel grids of one world |
| :mod:`~dgan.registration.files` | a registration's input files read and checked, its outputs
written | | :mod:`~dgan.registration.batch` | every pair of a CSV file in one process
(``dgan-register --batch``) |
| :mod:`~dgan.registration.refine` | instance refinement of a field on one pair |
| :mod:`~dgan.registration.affine` | the affine stage (mutual information) |
| :mod:`~dgan.registration.itk` | ITK text transform files |
| :mod:`~dgan.registration.scoring` | the start field, chosen by L_LG on the overlap |
| :mod:`~dgan.registration.model_folder` | the dgan model folder: T, G and how scans are prepared |
| :mod:`~dgan.registration.serving` | T as a TensorFlow Serving SavedModel (``dgan-export``) |
| :mod:`~dgan.registration.settings` | ``RefineConfig``, defaults and choices, free of TensorFlow |

It imports :mod:`dgan.core` and :mod:`dgan.data`, never training, evaluation, the commands or
the benchmarks.
"""
