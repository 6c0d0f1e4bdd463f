"""A registration's files: the scans and masks read in, the results written out.

Inputs are checked as they are read (:func:`load_inputs`, :func:`load_masks`); outputs
(:func:`write_outputs`) are NIfTI on the fixed scan's grid with its affine and header, so that
they overlay it in any viewer, written under temporary names and renamed into place together.
"""

import contextlib
import os

from ..core import coverage
from ..data import io as dio
from ..errors import InputError
from . import itk

#: The flow file's NIfTI ``descrip`` (at most 80 characters) and intent name (at most 16).
FLOW_DESCRIP = "dgan flow: voxels of this grid, ij, moved(p)=moving(p+flow(p))"
FLOW_INTENT_NAME = "dgan_flow_vox"
MOVED_DESCRIP = "dgan moved image (moving scan on this grid)"
LABELS_DESCRIP = "dgan warped labels (moving labels on this grid)"


def load_inputs(moving_path, fixed_path, moving_labels=None):
    """Read and check the input files: (moving, fixed, labels or None)
    :class:`dgan.data.io.Volume`."""
    moving = dio.load_volume(moving_path)
    fixed = dio.load_volume(fixed_path)
    labels = None if moving_labels is None else dio.load_volume(moving_labels, kind="labels")
    return moving, fixed, labels


def load_masks(moving, fixed, moving_mask=None, fixed_mask=None):
    """Read and check the mask files of two scans (:func:`dgan.core.coverage.load_mask`):
    (moving mask or None, fixed mask or None)."""
    return (None if moving_mask is None else coverage.load_mask(moving_mask, moving, "moving mask"),
            None if fixed_mask is None else coverage.load_mask(fixed_mask, fixed, "fixed mask"))


def write_outputs(result, out_moved, out_flow, out_labels=None, out_affine=None):
    """Write a :class:`FileRegistration` as NIfTI with the fixed scan's affine and header, and its
    affine transform as an ITK text file (:func:`dgan.registration.itk.write_affine`) when
    ``out_affine``.

    All files are written under temporary names first and renamed into place together at the
    end: after a failure no output is half-written and existing files are left as they were.
    The flow file is 4D (X, Y, Z, 3), displacements in voxels of the fixed grid, 'ij',
    moved(p) = moving(p + flow(p)); its header says so (``descrip``, intent "vector" named
    :data:`FLOW_INTENT_NAME`).

    :raises InputError: a bad output name, or a file that cannot be written
    """
    outputs = [  # (path, array, header description, intent)
        (out_moved, result.moved, MOVED_DESCRIP, None),
        (out_flow, result.flow, FLOW_DESCRIP, ("vector", (), FLOW_INTENT_NAME)),
    ]
    if out_labels is not None:
        if result.labels is None:
            raise InputError("no warped labels to write: no moving labels were given", out_labels)
        outputs.append((out_labels, result.labels, LABELS_DESCRIP, None))
    check_outputs(*(path for path, *_ in outputs))
    current = None
    try:
        with contextlib.ExitStack() as stack:
            temporaries = [stack.enter_context(dio.atomic_write(path)) for path, *_ in outputs]
            for tmp, (path, array, description, intent) in zip(temporaries, outputs):
                current = path
                dio.save_volume(tmp, array, result.affine, header=result.header,
                                description=description, intent=intent)
            if out_affine is not None:
                current = out_affine
                with open(stack.enter_context(dio.atomic_write(out_affine)), "w",
                          encoding="ascii") as handle:
                    handle.write(itk.affine_text(result.transform))
            current = None  # leaving the block renames every temporary file into place
    except OSError as error:
        problem = error.strerror or str(error) or type(error).__name__
        raise InputError(f"cannot write the file ({problem})", current or out_moved) from error


def check_outputs(*paths):
    """Output names end in .nii/.nii.gz and are distinct (so a run fails before computing)."""
    for path in paths:
        if path is not None and dio.volume_suffix(path) not in dio.NIFTI_SUFFIXES:
            raise InputError("an output must end in .nii or .nii.gz", path)
    named = [os.path.abspath(p) for p in paths if p is not None]
    if len(set(named)) != len(named):
        raise InputError("the output files must be distinct")
