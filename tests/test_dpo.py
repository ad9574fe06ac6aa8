"""The DPO family: formulas by hand, micro-batch additivity, and a toy preference problem."""

from __future__ import annotations

import math

import pytest
import torch

from steerl.config import AuxLossSpec
from steerl.losses import DPOTerm, PairInputs, dpo_loss

F64 = torch.float64


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


def _logsig(z: float) -> float:
    return -math.log1p(math.exp(-z))


# policy / reference sequence log-probs of two pairs
PC, PR, RC, RR = [-3.0, -5.0], [-4.0, -4.5], [-3.5, -4.0], [-3.8, -4.0]
# log-ratio margins h = (pc - rc) - (pr - rr):
#   pair 0: 0.5 - (-0.2) = 0.7; pair 1: -1 - (-0.5) = -0.5
H = [0.7, -0.5]


@pytest.mark.parametrize(
    ("variant", "beta", "smoothing", "per_pair"),
    [
        ("sigmoid", 0.1, 0.0, lambda h, b: -_logsig(b * h)),
        ("sigmoid", 0.5, 0.2, lambda h, b: -0.8 * _logsig(b * h) - 0.2 * _logsig(-b * h)),
        ("ipo", 0.5, 0.0, lambda h, b: (h - 1 / (2 * b)) ** 2),
        ("hinge", 2.0, 0.0, lambda h, b: max(0.0, 1 - b * h)),
    ],
)
def test_dpo_variants_by_hand(variant, beta, smoothing, per_pair):
    pc = _t(PC).requires_grad_(True)
    loss, m = dpo_loss(
        pc, _t(PR), _t(RC), _t(RR), variant=variant, beta=beta, label_smoothing=smoothing
    )
    want = sum(per_pair(h, beta) for h in H) / 2
    assert loss.item() == pytest.approx(want, abs=1e-12)
    # implicit rewards beta * (logpi - logref), margin, accuracy (share with h > 0)
    assert m["rewards_chosen"].item() == pytest.approx(beta * (0.5 - 1.0) / 2)
    assert m["rewards_rejected"].item() == pytest.approx(beta * (-0.2 - 0.5) / 2)
    assert m["reward_margin"].item() == pytest.approx(beta * sum(H) / 2)
    assert m["accuracy"].item() == pytest.approx(0.5)
    # gradient w.r.t. the chosen log-prob: d loss / d h, by central differences
    loss.backward()
    eps = 1e-6
    for i, h in enumerate(H):
        d = (per_pair(h + eps, beta) - per_pair(h - eps, beta)) / (2 * eps) / 2
        assert pc.grad[i].item() == pytest.approx(d, abs=1e-6)


def test_pairs_in_micro_batches_add_up():
    args = dict(variant="sigmoid", beta=0.3, label_smoothing=0.1)
    full, _ = dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), **args)
    parts = [
        dpo_loss(
            _t(PC[i : i + 1]),
            _t(PR[i : i + 1]),
            _t(RC[i : i + 1]),
            _t(RR[i : i + 1]),
            total_pairs=2.0,
            **args,
        )[0].item()
        for i in range(2)
    ]
    assert sum(parts) == pytest.approx(full.item(), abs=1e-14)
    empty, m = dpo_loss(*(torch.zeros(0, dtype=F64) for _ in range(4)), total_pairs=1.0)
    assert empty.item() == 0.0 and m["accuracy"].item() == 0.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="variant"):
        dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), variant="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), variant="ipo", label_smoothing=0.1)


@pytest.mark.parametrize(
    ("variant", "smoothing"), [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0)]
)
def test_optimisation_increases_the_chosen_minus_rejected_margin(variant, smoothing):
    """A toy policy: a table of next-token logits per position (4 positions x 6 tokens)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.nn.Parameter(0.1 * torch.randn(4, 6, generator=g, dtype=F64))
    ref_logits = logits.detach().clone()
    chosen = torch.tensor([[0, 1, 2, 3], [1, 1, 0, 5], [2, 3, 4, 4]])
    rejected = torch.tensor([[5, 4, 3, 2], [0, 2, 3, 1], [3, 3, 5, 0]])

    def seq_logps(table: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        lp = table.log_softmax(-1)  # (positions, vocab)
        return lp.gather(-1, seqs.T).T.sum(-1)  # (pairs,)

    term = DPOTerm(
        AuxLossSpec(
            name="dpo",
            coef=1.0,
            args={"variant": variant, "beta": 0.5, "label_smoothing": smoothing},
        )
    )
    ref_c, ref_r = seq_logps(ref_logits, chosen), seq_logps(ref_logits, rejected)
    opt = torch.optim.SGD([logits], lr=0.05 if variant == "ipo" else 0.5)  # IPO: steeper
    margins, losses = [], []
    for _ in range(10):
        pairs = PairInputs(seq_logps(logits, chosen), seq_logps(logits, rejected), ref_c, ref_r, 3)
        loss, m = term(pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        margins.append(m["reward_margin"].item())
        losses.append(loss.item())
    assert margins[0] == pytest.approx(0.0, abs=1e-12)  # policy == reference at the start
    # IPO's target margin is beta / (2 beta) = 0.5; hinge stops pushing once beta h >= 1
    assert margins[-1] > margins[0] + 0.25, margins
    assert margins[1] > margins[0]
    assert losses[-1] < losses[0]
    assert m["accuracy"].item() == 1.0
