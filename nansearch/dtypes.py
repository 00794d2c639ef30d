"""The floating-point limits the audit and the early warning judge values against.

``LIMITS`` is keyed by torch's name for the dtype (``float16``, as a trial records its
compute dtype); ``FP16_MAX`` is float16's largest finite value, 65504.
"""

from __future__ import annotations

import torch

LIMITS: dict[str, float] = {
    name: float(torch.finfo(getattr(torch, name)).max)
    for name in ("float16", "bfloat16", "float32", "float64")
}
FP16_MAX = LIMITS["float16"]
