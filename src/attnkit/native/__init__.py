"""Optional native CPU kernels and the layers that use them.

* :mod:`attnkit.native.build`: the AVX2 skinny product (``skinny.c``), compiled on first use and
  loaded safely; :func:`available`, :func:`status` (a :class:`NativeStatus`: available, and
  the reason), :func:`kernel_dir`.
* :mod:`attnkit.native.skinny`: :class:`SkinnyLinear` and :func:`skinny_linear`, the calls into it.
* :mod:`attnkit.native.linear`: :func:`~attnkit.native.linear.decoding_linears`, which routes a
  model's linears through the fastest product for a few rows while it decodes.
* :mod:`attnkit.native.int8`: :class:`~attnkit.native.int8.Int8Linear` and
  :func:`~attnkit.native.int8.quantize_int8` (also importable from :mod:`attnkit.generation`).

This package sits on ``attnkit._util`` and torch alone.
"""

from __future__ import annotations

from attnkit.native.build import NativeStatus, available, kernel_dir, status
from attnkit.native.skinny import SkinnyLinear, skinny_linear

__all__ = ["NativeStatus", "SkinnyLinear", "available", "kernel_dir", "skinny_linear", "status"]
