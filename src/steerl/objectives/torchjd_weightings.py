"""The torchjd backend of the weightings (``make_weighting(name, backend="torchjd")``).

torchjd's own weightings behind steerl's ``Weighting`` interface (``pip install steerl[mo]``).
Which methods use it, and when: ``steerl.objectives.weightings``, which re-exports everything
here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from steerl.objectives.gramian_solvers import _TINY
from steerl.objectives.weightings import Weighting


# --------------------------------------------------------------------------- torchjd adapters
class TorchJDWeighting(Weighting):
    """A torchjd ``Weighting[PSDMatrix]`` behind steerl's interface (``backend="torchjd"``)."""

    def __init__(self, name: str, inner: Any):
        self.name = name
        self.inner = inner

    def __call__(self, gramian: torch.Tensor) -> torch.Tensor:
        G = gramian.detach().to(torch.float64)
        G = 0.5 * (G + G.T)
        w = self.inner(G)
        return w.to(dtype=gramian.dtype, device=gramian.device)

    def __repr__(self) -> str:
        return f"TorchJDWeighting(torchjd.aggregation.{type(self.inner).__name__})"


class _NormalizedTorchJD(Weighting):
    """MGDA with ``normalize="l2"`` on top of torchjd's MGDA weighting."""

    def __init__(self, inner: Any):
        self.name = "mgda"
        self.inner = inner

    def weights(self, G: np.ndarray) -> np.ndarray:
        norms = np.sqrt(np.maximum(np.diag(G), 0.0))
        live = norms > _TINY
        w = np.zeros(G.shape[0])
        if live.any():
            n = norms[live]
            Gn = torch.as_tensor(G[np.ix_(live, live)] / np.outer(n, n))
            w[live] = self.inner(Gn).numpy() / n
        return w

    def __repr__(self) -> str:
        return f"TorchJDWeighting(torchjd.aggregation.{type(self.inner).__name__}, normalize='l2')"


#: Methods that ``backend="torchjd"`` takes from torchjd.
TORCHJD_METHODS = ("mgda", "upgrad", "imtl_g", "cagrad")
#: Methods for which ``backend="auto"`` prefers torchjd's implementation when it imports.
AUTO_TORCHJD = ("upgrad", "cagrad")


def torchjd_weighting(name: str, **kw: Any) -> Weighting:
    """torchjd's weighting for ``name``; raises ImportError when torchjd or its solver is
    missing (``pip install steerl[mo]``), ValueError for a method torchjd is not used for."""
    import torchjd.aggregation as tja  # noqa: PLC0415 - optional extra, imported lazily

    if name == "mgda":
        inner = tja.MGDAWeighting(epsilon=1e-6, max_iters=1000)
        if kw.get("normalize", "none") == "l2":
            return _NormalizedTorchJD(inner)
        return TorchJDWeighting(name, inner)
    if name == "upgrad":
        pref = kw.get("pref")
        return TorchJDWeighting(
            name, tja.UPGradWeighting(None if pref is None else torch.tensor(pref))
        )
    if name == "imtl_g":
        return TorchJDWeighting(name, tja.IMTLGWeighting())
    if name == "cagrad":
        return TorchJDWeighting(name, tja.CAGradWeighting(c=kw.get("c", 0.4)))
    raise ValueError(
        f"steerl does not use torchjd for {name!r}; torchjd methods: {TORCHJD_METHODS}"
    )
