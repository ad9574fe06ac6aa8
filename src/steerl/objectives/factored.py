r"""Per-term gradients at the LM head's input from one head backward (per-token factorisation).

A gradient-level balancer needs one gradient per term on its restricted set. Taken one term at
a time (``torch.autograd.grad`` per term), every term pays a backward through the LM head: the
(N, S, V) log-softmax and a (N S, V) x (V, H) product, which for a 152k-token vocabulary costs
about as much as a third of a whole training step.

The policy-gradient family does not need that. Its terms are functions of a few *per-token*
tensors (the *taps*: the completion log-probabilities ``lp`` (N, T) and, with an entropy bonus,
the entropies), and each tap is a row-wise function of the head's input h (N, S, H): token t
of the completion is read from position ``s = S - T - 1 + t`` only (next-token prediction, as in
``steerl.logprobs.completion_logprobs``). So, for term k and tap j, with
c_kj = dL_k / d tap_j (N, T) (a cheap backward through the loss alone) and
U_j = d (sum tap_j) / dh (N, S, H) (one head backward per tap, shared by all terms)::

    dL_k / dh[n, s] = sum_j c_kj[n, t(s)] * U_j[n, s]        (exact, by the chain rule)

because d tap_j[n, t] / dh[n, s] vanishes unless s = s(t). The K head backwards become one per
tap; from h down to the restricted parameters each term still needs its own (cheap) backward.

``head_input_grads`` applies this only when it is exact, and says why not otherwise:

- every term depends on trainable tensors only through the taps (checked on the autograd
  graph: a walk from the term that stops at the taps must reach no leaf);
- every tap depends on trainable tensors only through one captured head input h and the head's
  own parameters (same walk, stopping at h), has h's batch size and T <= S - 1;
- U_j vanishes outside the window of positions the convention above assigns to the tap.

The head's parameters must not be in the restricted set (their per-term gradients would need
the per-term (N, S, V) backward again); the caller checks that.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch

from steerl.objectives.balancers import _flat_grad

logger = logging.getLogger("steerl.objectives")

Edge = tuple[object, int]


def _edge(t: torch.Tensor) -> Edge | None:
    return None if t.grad_fn is None else (t.grad_fn, t.output_nr)


def graph_reach(
    root: torch.Tensor, stops: Sequence[Edge], allowed_leaves: set[int] = frozenset()
) -> tuple[set[int], bool]:
    """Walk ``root``'s autograd graph, not passing the edges ``stops``.

    Returns ``(indices of the stops reached, leaked)``; ``leaked`` is True when the walk
    reaches a trainable leaf whose ``id`` is not in ``allowed_leaves``, i.e. ``root`` depends
    on it by a path that avoids every stop. Stops at the first leak.
    """
    if root.grad_fn is None:
        return set(), bool(root.requires_grad and id(root) not in allowed_leaves)
    index = {s: i for i, s in enumerate(stops)}
    reached: set[int] = set()
    seen: set[object] = set()
    stack: list[Edge] = [(root.grad_fn, root.output_nr)]
    while stack:
        edge = stack.pop()
        if edge in index:
            reached.add(index[edge])
            continue
        node = edge[0]
        if node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)
        if var is not None:  # AccumulateGrad: a leaf that requires grad
            if id(var) not in allowed_leaves:
                return reached, True
            continue
        stack.extend(e for e in node.next_functions if e[0] is not None)
    return reached, False


def head_input_grads(
    losses: Sequence[torch.Tensor],
    taps: Sequence[torch.Tensor],
    head_inputs: Sequence[torch.Tensor],
    head_param_ids: Iterable[int] = (),
) -> tuple[torch.Tensor, list[torch.Tensor]] | str:
    """``(h, [dL_k/dh for each loss])`` through one head backward per tap, or why not.

    losses: K scalars; taps: per-token tensors (N, T) the losses are computed from;
    head_inputs: candidate final hidden states (N, S, H), what the LM head reads, captured in
    this micro-batch (the one the taps come from is found on the graph). The returned
    gradients have h's shape and dtype. The graph is retained. A string return means the
    factorisation would not be exact here; the caller falls back to one backward per loss.
    """
    taps = [t for t in taps if isinstance(t, torch.Tensor) and t.requires_grad]
    if not taps:
        return "no per-token tensor with a gradient was handed to tap()"
    if not head_inputs:
        return "no LM-head input was captured in this micro-batch"
    tap_edges = [_edge(t) for t in taps]
    if any(e is None for e in tap_edges):
        return "a tapped tensor is a leaf"
    for loss in losses:
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            _, leaked = graph_reach(loss, tap_edges)
            if leaked:
                return "a term depends on the model by a path that avoids the tapped tensors"
    h_edges = [_edge(h) for h in head_inputs]
    if any(e is None for e in h_edges):
        return "a captured head input is a leaf"
    allowed = set(head_param_ids)
    which: set[int] = set()
    for t in taps:
        reached, leaked = graph_reach(t, h_edges, allowed)
        if leaked:
            return "a tapped tensor depends on parameters other than the head's below the head"
        which |= reached
    if len(which) != 1:
        return f"the tapped tensors come from {len(which)} captured head inputs, not one"
    h = head_inputs[which.pop()]
    if h.dim() != 3:
        return f"the captured head input has shape {tuple(h.shape)}, not (N, S, H)"
    n, s = h.shape[0], h.shape[1]
    for t in taps:
        if t.dim() != 2 or t.shape[0] != n or not 1 <= t.shape[1] <= s - 1:
            return (
                f"a tapped tensor of shape {tuple(t.shape)} does not fit the head input "
                f"{tuple(h.shape)}"
            )
    start = s - taps[0].shape[1] - 1
    if any(t.shape[1] != taps[0].shape[1] for t in taps):
        return "the tapped tensors have different lengths"
    T = taps[0].shape[1]
    # U_j: one head backward per tap; rows outside the window must vanish (row-wise taps)
    U = []
    for t in taps:
        (u,) = torch.autograd.grad(t, h, torch.ones_like(t), retain_graph=True)
        if bool(u[:, :start].any() | u[:, start + T :].any()):
            return "a tapped tensor is not read from the positions S - T - 1 ... S - 2 of h"
        U.append(u[:, start : start + T].float())
    grads = []
    for loss in losses:
        g = torch.zeros_like(h)
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            cs = torch.autograd.grad(loss, taps, retain_graph=True, allow_unused=True)
            acc = None
            for c, u in zip(cs, U):
                if c is not None:
                    term = c.float()[..., None] * u
                    acc = term if acc is None else acc + term
            if acc is not None:
                g[:, start : start + T] = acc.to(h.dtype)
        grads.append(g)
    return h, grads


def flat_grads_from(
    h: torch.Tensor, grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor]
) -> torch.Tensor:
    """(K, n) float32: row k is the backward of ``grads[k]`` from ``h`` into ``params``.

    One backward per row from h down to the parameters (not through the head); the graph is
    retained. Parameters that h does not depend on get zeros.
    """
    rows = []
    for g in grads:
        out = torch.autograd.grad(h, params, g, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                    for x, p in zip(out, params)
                ]
            )
        )
    return torch.stack(rows)


#: ``objectives.jacobian`` values
JACOBIAN_MODES = ("auto", "autograd")


class TermJacobian:
    """Per-term gradients on a restricted set, factorised through the LM head when exact.

    ``mode``: ``auto`` uses ``head_input_grads`` whenever the trainer handed the per-token
    tensors (``tap``) and the factorisation is exact, else one ``autograd.grad`` per term;
    ``autograd`` always takes the per-term backward. ``last_path`` says which one the last
    micro-batch took (``factored`` or ``autograd: <reason>``).
    """

    def __init__(self, mode: str = "auto"):
        if mode not in JACOBIAN_MODES:
            raise ValueError(
                f"objectives.jacobian={mode!r} is not one of {', '.join(JACOBIAN_MODES)}"
            )
        self.mode = mode
        self.head_param_ids: set[int] = set()
        self.blocked: str | None = "not bound to a model"  # why factorisation can never apply
        self.last_path = ""
        self._warned: set[str] = set()
        self._captured: list[torch.Tensor] = []
        self._taps: list[torch.Tensor] = []
        self._hook = None
        self._is_open = lambda: False

    def bind(self, model: torch.nn.Module, restricted: Sequence[torch.Tensor], is_open) -> None:
        """Capture the final hidden state (N, S, H) while ``is_open()`` and grad is on.

        The tensor is the decoder's output (``model.<base_model_prefix>``, after the final
        norm), which both the full forward and ``steerl.logprobs``' chunked head read; models
        without such a decoder fall back to the LM head's input (a forward pre-hook).
        """
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._is_open = is_open
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            self.blocked = "the model has no LM head (get_output_embeddings())"
            return
        self.head_param_ids = {id(p) for p in head.parameters()}
        if any(id(p) in self.head_param_ids for p in restricted):
            self.blocked = "the restricted set holds LM-head parameters"
        else:
            self.blocked = None
        width = getattr(head, "in_features", None)
        decoder = _decoder(model)
        if decoder is not None:
            self._hook = decoder.register_forward_hook(
                lambda m, a, out: self._capture(out[0] if isinstance(out, tuple | list) else
                                                getattr(out, "last_hidden_state", None), width)
            )  # fmt: skip
        else:
            self._hook = head.register_forward_pre_hook(
                lambda m, a: self._capture(a[0] if a else None, width)
            )

    def _capture(self, h: torch.Tensor | None, width: int | None) -> None:
        if (
            self._is_open()
            and torch.is_grad_enabled()
            and isinstance(h, torch.Tensor)
            and h.requires_grad
            and (width is None or h.shape[-1] == width)
        ):
            self._captured.append(h)

    def tap(self, tensors: Iterable[torch.Tensor | None]) -> None:
        self._taps = [t for t in tensors if isinstance(t, torch.Tensor)]

    def take(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """This micro-batch's captured head inputs and taps; clears both."""
        out = (self._captured, self._taps)
        self._captured, self._taps = [], []
        return out

    def reset(self) -> None:
        self._captured, self._taps = [], []

    def head_grads(
        self, losses: Sequence[torch.Tensor], captured, taps
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """``(h, [dL_k/dh])`` when factorisation applies (sets ``last_path``), else None."""
        if self.mode == "autograd":
            self.last_path = "autograd: objectives.jacobian=autograd"
            return None
        if self.blocked is not None:
            self.last_path = f"autograd: {self.blocked}"
            return None
        out = head_input_grads(losses, taps, captured, self.head_param_ids)
        if isinstance(out, str):
            self.last_path = f"autograd: {out}"
            if taps and out not in self._warned:  # once per reason: a slow path, not an error
                self._warned.add(out)
                logger.warning(
                    "objectives.jacobian=auto: one backward per term through the LM head, since "
                    "%s (exact, but slower)",
                    out,
                )
            return None
        self.last_path = "factored"
        return out

    def rows(self, losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
        """(K, n) float32 per-term gradients on ``params`` (this micro-batch; clears taps)."""
        captured, taps = self.take()
        fact = self.head_grads(losses, captured, taps)
        if fact is None:
            if not losses:
                return torch.zeros(0, sum(p.numel() for p in params))
            return torch.stack([_flat_grad(loss, params) for loss in losses])
        h, grads = fact
        return flat_grads_from(h, grads, params)


def _decoder(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose output[0] is the final hidden state (``model.model`` for Llama/Qwen)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    dec = getattr(inner, getattr(inner, "base_model_prefix", "") or "", None)
    return dec if isinstance(dec, torch.nn.Module) and dec is not inner else None
