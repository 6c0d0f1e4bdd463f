"""ITK text transform files: an affine transform that ANTs, ITK-SNAP and 3D Slicer read.

The file (``.txt`` or ``.tfm``) is ITK's "Insight Transform File"::

    #Insight Transform File V1.0
    #Transform 0
    Transform: AffineTransform_double_3_3
    Parameters: m00 m01 m02 m10 m11 m12 m20 m21 m22 t0 t1 t2
    FixedParameters: c0 c1 c2

ITK maps a point x to ``M (x - c) + c + t``, in **LPS** physical coordinates (x towards the
patient's left, y posterior, z superior); dgan's world coordinates are NIfTI's **RAS** (x right,
y anterior), so a RAS matrix T is written as L T L with L = diag(-1, -1, 1) and read back the same
way. The transform maps points of the fixed (reference) image to points of the moving image,
as ANTs's own affine output does: ``antsApplyTransforms -r fixed -i moving -t file`` resamples
the moving image onto the fixed one with it, no inversion.

We write c = 0 (then t is the whole offset); reading accepts any centre, and the
``MatrixOffsetTransformBase`` name that ANTs uses for the same transform.
"""

import numpy as np

from ..data.io import atomic_write
from ..errors import InputError

#: RAS <-> LPS: x and y change sign.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
HEADER = "#Insight Transform File V1.0"
TRANSFORM_TYPE = "AffineTransform_double_3_3"
#: Transform types that :func:`read_affine` accepts (each is ITK's 3D affine, 12 parameters).
#: File endings of an ITK text transform (``dgan-register --out-affine``).
ITK_SUFFIXES = (".txt", ".tfm")

READABLE_TYPES = ("AffineTransform_double_3_3", "AffineTransform_float_3_3",
                  "MatrixOffsetTransformBase_double_3_3", "MatrixOffsetTransformBase_float_3_3")


def _number(value):
    """Shortest text that reads back to the same float64 (repr), without '-0'."""
    return repr(float(value) + 0.0)


def itk_parameters(matrix):
    """(parameters (12,), fixed parameters (3,)) of a RAS world matrix, in ITK's LPS form."""
    lps = RAS_TO_LPS @ np.asarray(matrix, np.float64) @ RAS_TO_LPS
    return np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]]), np.zeros(3)


def from_itk_parameters(parameters, fixed_parameters):
    """The RAS world matrix (4, 4) of ITK's 12 affine parameters and centre (LPS)."""
    parameters = np.asarray(parameters, np.float64)
    centre = np.asarray(fixed_parameters, np.float64)
    linear = parameters[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = linear
    lps[:3, 3] = parameters[9:12] + centre - linear @ centre
    return RAS_TO_LPS @ lps @ RAS_TO_LPS


def write_affine(path, matrix):
    """Write a RAS world matrix (fixed point -> moving point) as an ITK text transform, atomically.

    :param path: the file (conventionally ``.txt`` or ``.tfm``)
    :param matrix: shape = (4, 4), last row (0, 0, 0, 1)
    :raises InputError: the file cannot be written
    """
    text = affine_text(matrix)
    try:
        with atomic_write(path) as tmp:
            with open(tmp, "w", encoding="ascii") as handle:
                handle.write(text)
    except OSError as error:
        raise InputError(f"cannot write the file ({error.strerror or error})", path) from error


def affine_text(matrix):
    """The text of :func:`write_affine`'s file for a RAS world matrix (4, 4)."""
    matrix = np.asarray(matrix, np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) \
            or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise ValueError(f"expected a finite 4x4 affine matrix, got {matrix!r}")
    parameters, fixed = itk_parameters(matrix)
    return "\n".join([
        HEADER,
        "#Transform 0",
        f"Transform: {TRANSFORM_TYPE}",
        "Parameters: " + " ".join(_number(v) for v in parameters),
        "FixedParameters: " + " ".join(_number(v) for v in fixed),
        "",
    ])


def read_affine(path):
    """Read an ITK text affine transform as a RAS world matrix (fixed point -> moving point).

    :return: shape = (4, 4), float64
    :raises InputError: missing file, not an ITK text transform, not one 3D affine transform
    """
    try:
        with open(path, encoding="ascii", errors="strict") as handle:
            lines = [line.strip() for line in handle]
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the file as an ITK text transform ({error})", path) from None
    if not lines or not lines[0].startswith("#Insight Transform File"):
        raise InputError(f"not an ITK text transform (the first line must be {HEADER!r})", path)
    fields = {}
    for line in lines[1:]:
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            if key.strip() in fields:
                raise InputError("holds more than one transform; expected one affine", path)
            fields[key.strip()] = value.strip()
    kind = fields.get("Transform")
    if kind not in READABLE_TYPES:
        raise InputError(f"holds a {kind} transform; expected one of {', '.join(READABLE_TYPES)}",
                         path)
    try:
        parameters = np.array(fields["Parameters"].split(), np.float64)
        fixed = np.array(fields.get("FixedParameters", "0 0 0").split(), np.float64)
    except (KeyError, ValueError) as error:
        raise InputError(f"bad or missing parameters ({error})", path) from None
    if parameters.shape != (12,) or fixed.shape != (3,) or not np.all(np.isfinite(parameters)) \
            or not np.all(np.isfinite(fixed)):
        raise InputError(f"expected 12 parameters and 3 fixed parameters, got "
                         f"{parameters.size} and {fixed.size}", path)
    return from_itk_parameters(parameters, fixed)
