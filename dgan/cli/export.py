"""``dgan-export``: a dgan model folder as a TensorFlow Serving SavedModel, a thin layer over
:func:`dgan.registration.serving.export_saved_model`. The arguments are parsed before TensorFlow
starts, and its start-up lines stay off the terminal unless ``--verbose``
(:func:`dgan.compat.quiet`).
"""

import argparse
import os
import sys

from .. import compat
from ..errors import InputError


def _parser():
    parser = argparse.ArgumentParser(
        prog="dgan-export",
        description="Export a trained dgan model folder as a TensorFlow Serving SavedModel "
        "(<base-dir>/<version>/saved_model.pb + variables/).",
    )
    add = parser.add_argument
    add("--model", required=True, metavar="FOLDER|NAME",
        help="dgan model folder (from training), or the name of a model shipped with dgan")
    add("--base-dir", required=True, metavar="FOLDER", help="model base path served by TF Serving")
    add("--version", type=int, default=1, metavar="N", help="model version folder (default 1)")
    add("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
        help="input spatial shape of the signature (default: the training shape)")
    add("--overwrite", action="store_true", help="replace an existing version")
    add("--verbose", action="store_true",
        help="let TensorFlow's start-up and log lines through to stderr (hidden by default)")
    return parser


def main(argv=None):
    """``dgan-export``; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    compat.quiet(args.verbose)  # before dgan.registration.serving starts TensorFlow
    from ..registration.serving import SIGNATURE_NAME, export_saved_model

    try:
        existing = os.path.join(args.base_dir, str(args.version))
        if os.path.exists(existing) and not args.overwrite:
            raise InputError("version folder already exists; pass --overwrite to replace it",
                             existing)
        destination = export_saved_model(
            args.model, args.base_dir, version=args.version, shape=args.shape,
            overwrite=args.overwrite,
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {destination} (signature '{SIGNATURE_NAME}': moving, fixed -> moved, flow)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
