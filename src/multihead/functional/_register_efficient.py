"""Registration of the memory-efficient and approximate kernels in the backend registry."""

from __future__ import annotations

from . import chunked, linear, local, lowrank


def register_efficient_backends() -> None:
    """Register ``chunked``, ``local`` (exact) and ``linear``, ``lowrank`` (approximate).

    Safe to call more than once (entries are replaced). Priorities keep ``"auto"`` on the
    fused ``sdpa`` kernel (priority 10) whenever it can run: ``local`` (40) and ``chunked``
    (50) are for callers who name them; approximate backends are never chosen by auto.

    Example:
        >>> from multihead.functional import backend_names
        >>> register_efficient_backends()
        >>> {"chunked", "local", "linear", "lowrank"} <= set(backend_names())
        True
    """
    # Imported here: this module is itself imported while multihead.functional initialises.
    from . import register_backend

    register_backend(
        "chunked",
        chunked.chunked_backend,
        supports=chunked.supports,
        exact=True,
        priority=50,
        description="exact; key blocks with an online softmax, O(N·D) memory; long sequences",
        replace=True,
    )
    register_backend(
        "local",
        local.local_backend,
        supports=local.supports,
        exact=True,
        priority=40,
        description="exact sliding-window attention in O(N·W); needs window",
        replace=True,
    )
    register_backend(
        "linear",
        linear.linear_backend,
        supports=linear.supports,
        exact=False,
        priority=200,
        description="approximate: linear attention, phi = elu + 1 (Katharopoulos et al. 2020)",
        replace=True,
    )
    register_backend(
        "lowrank",
        lowrank.lowrank_backend,
        supports=lowrank.supports,
        exact=False,
        priority=210,
        description="approximate: Linformer-style keys/values mean-pooled to 64 rows",
        replace=True,
    )
