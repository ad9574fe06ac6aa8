"""Which tensors a gradient-level balancer aggregates on (``objectives.aggregate_params``).

Aggregators (PCGrad, MGDA, UPGrad, ...) need one gradient *per objective*, K backward passes
where a plain sum needs one; steerl therefore runs them on a small, explicit set of
parameters and gives every other parameter the plain weighted sum's gradient. The spec:

==================  ===========================================================================
``last_blocks:N``   the trainable parameters of the last N transformer blocks (the numbered
                    module list with the most entries: ``model.layers.<i>``,
                    ``transformer.h.<i>``, ...; the final norm and the LM head are not blocks)
``lora``            the trainable LoRA adapter parameters (names containing ``lora_``)
``regex:<pattern>`` the trainable parameters whose names ``re.search``-match the pattern
``hidden_state``    no parameters: the per-objective gradients are taken w.r.t. the final hidden
                    state (the decoder's output, read by the LM head), as MGDA-UB (Sener &
                    Koltun 2018) does; the weights found there scale the losses of one
                    ordinary backward
==================  ===========================================================================

``resolve_params(model, spec)`` returns a ``ParamSelection`` with the resolved names of the
aggregated and the plain-sum parameters (for logging: ``describe()``). An empty selection is
an error that names the key and its value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

KEY = "objectives.aggregate_params"
SPEC_FORMS = "last_blocks:N, lora, hidden_state, regex:<pattern>"
_BLOCK = re.compile(r"^(.*?)\.(\d+)\.")


def parse_spec(spec: str) -> tuple[str, str | int | None]:
    """``"last_blocks:2"`` -> ``("last_blocks", 2)``; raises ``ValueError`` naming the forms."""
    if spec in ("lora", "hidden_state"):
        return spec, None
    kind, sep, arg = spec.partition(":")
    if sep and kind == "last_blocks":
        if arg.isdigit() and int(arg) >= 1:
            return kind, int(arg)
        raise ValueError(f"{KEY}={spec!r}: last_blocks:N needs an integer N >= 1")
    if sep and kind == "regex":
        try:
            re.compile(arg)
        except re.error as e:
            raise ValueError(f"{KEY}={spec!r}: {arg!r} is not a regex: {e}") from None
        if not arg:
            raise ValueError(f"{KEY}={spec!r}: regex:<pattern> needs a pattern")
        return kind, arg
    raise ValueError(f"{KEY}={spec!r} is not understood; allowed forms: {SPEC_FORMS}")


@dataclass(frozen=True)
class ParamSelection:
    """The parameters (or the hidden state) an aggregator works on, and the rest."""

    spec: str
    kind: str  # "params" or "hidden_state"
    names: tuple[str, ...] = ()  # aggregated parameters (empty for hidden_state)
    params: tuple[torch.nn.Parameter, ...] = field(default=(), repr=False)
    plain_names: tuple[str, ...] = ()  # parameters that get the plain weighted sum's gradient

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def describe(self) -> dict[str, object]:
        return {
            "aggregate_params": self.spec,
            "target": self.kind,
            "aggregated": list(self.names),
            "aggregated_numel": self.numel,
            "plain_sum": list(self.plain_names),
        }


def resolve_params(
    model: torch.nn.Module, spec: str, balancer: str = "an aggregator"
) -> ParamSelection:
    """Resolve ``spec`` against ``model.named_parameters()`` (trainable ones only)."""
    kind, arg = parse_spec(spec)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    all_names = tuple(n for n, _ in named)
    if kind == "hidden_state":
        return ParamSelection(spec, "hidden_state", plain_names=all_names)
    if kind == "lora":
        chosen = [(n, p) for n, p in named if "lora_" in n]
        hint = "no trainable parameter name contains 'lora_' (is model.lora enabled?)"
    elif kind == "regex":
        rx = re.compile(str(arg))
        chosen = [(n, p) for n, p in named if rx.search(n)]
        hint = f"no trainable parameter name matches {arg!r}"
    else:
        chosen, hint = _last_blocks(named, int(arg))  # type: ignore[arg-type]
    if not chosen:
        sample = ", ".join(all_names[:4])
        raise ValueError(
            f"{KEY}={spec!r} resolved to an empty parameter set: an aggregator requested on "
            f"an empty parameter set (objectives.balancer={balancer}); {hint}. Trainable names "
            f"look like: {sample}{', ...' if len(all_names) > 4 else ''}"
        )
    ids = {id(p) for _, p in chosen}
    return ParamSelection(
        spec,
        "params",
        names=tuple(n for n, _ in chosen),
        params=tuple(p for _, p in chosen),
        plain_names=tuple(n for n, p in named if id(p) not in ids),
    )


def _last_blocks(named, n: int):
    counts: dict[str, set[int]] = {}
    for name, _ in named:
        m = _BLOCK.match(name)  # the outermost numbered container: "model.layers.3.mlp..."
        if m:
            counts.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not counts:
        return [], "no numbered block list (model.layers.<i>, transformer.h.<i>, ...) found"
    prefix = max(counts, key=lambda k: (len(counts[k]), -len(k)))
    top = max(counts[prefix])
    keep = {i for i in counts[prefix] if i > top - n}
    chosen = []
    for name, p in named:
        m = _BLOCK.match(name)
        if m and m.group(1) == prefix and int(m.group(2)) in keep:
            chosen.append((name, p))
    return chosen, f"no trainable parameter in the last {n} blocks of {prefix}"
