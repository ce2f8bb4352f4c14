"""Per-video resize and crop geometry, computed on the CPU for the GPU (DALI) pipeline.

The DALI model must not read the decoder's GPU output on the CPU (Triton's dali backend runs DALI's legacy
executor, which refuses GPU->CPU transitions), so the sizes it needs come in as a small int32 tensor made
here from the demux-only probe, with the reference's own rules (:func:`~.transforms.scaled_size`,
:func:`~.transforms.crop_offsets`) -- the same numbers the reference computes from the decoded frames.

Layout of ``GEOMETRY`` (int32, ``3 + 2 V``)::

    [rotation (counter-clockwise degrees: 0, 90, -90 or 180), resized height, resized width,
     y_0, x_0, y_1, x_1, ...]   # top-left corner of each view's crop, in the reference's view order
"""

from __future__ import annotations

import numpy as np

from training.preprocessing.spec import PreprocessSpec
from training.preprocessing.transforms import crop_offsets, scaled_size

ROTATIONS = (0, 90, -90, 180)


def geometry_length(spec: PreprocessSpec) -> int:
    """Number of int32 values in a ``GEOMETRY`` tensor for ``spec``."""
    return 3 + 2 * spec.num_views


def serving_geometry(height: int, width: int, rotation: int, spec: PreprocessSpec) -> np.ndarray:
    """``GEOMETRY`` for a stored ``width x height`` stream shown rotated by ``rotation`` degrees.

    Rotation is applied first (as the reference does), so a quarter turn swaps height and width before the
    short side is scaled. Raises ``ValueError`` naming the problem when a crop cannot fit.
    """
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation}")
    if height < 1 or width < 1:
        raise ValueError(f"frame size {width}x{height} is not a picture")
    if rotation in (90, -90):
        height, width = width, height
    nh, nw = scaled_size(height, width, spec.short_side)
    offsets = crop_offsets(nh, nw, spec)  # ValueError when the crop does not fit
    out = [rotation, nh, nw]
    for y, x in offsets:
        out += [y, x]
    return np.asarray(out, dtype=np.int32)
