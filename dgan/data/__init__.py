"""Volumes in and out, prepared for the networks, and the data a run trains on.

| module | one job |
|---|---|
| :mod:`~dgan.data.io` | NIfTI in and out, orientation, spacing, resampling; atomic writes |
| :mod:`~dgan.data.preprocessing` | how a scan is prepared for the networks (training and
registration) |
| :mod:`~dgan.data.synth` | random smooth deformations and MR contrasts from tissue maps |
| :mod:`~dgan.data.scans` | the user's scan lists, loaded and prepared; labelled pairs (CSV) |
| :mod:`~dgan.data.pipeline` | the unpaired ``tf.data`` training pipeline |
| :mod:`~dgan.data.demo` | the embedded demo data (MNI152 T1 and a T2-like rendering) |

It imports nothing else of dgan but :mod:`dgan.compat` and :mod:`dgan.errors`.
"""
