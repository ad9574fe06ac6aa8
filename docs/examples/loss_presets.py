"""The same toy batch under every loss preset: the loss and how the gradient is spread.

On-policy (ratio 1) the presets differ in aggregation: token-mean gives the long sequence
more weight than seq-mean-token-mean, Dr.GRPO's constant normaliser removes the length bias.
"""

import torch

from steerl.config import LossConfig
from steerl.losses import LossInputs, build_policy_loss

torch.manual_seed(0)
# two completions: a long one (6 tokens, advantage +1) and a short one (2 tokens, -1)
mask = torch.tensor([[1.0] * 6, [1.0, 1.0, 0, 0, 0, 0]])
old = torch.randn(2, 6) * 0.1 - 1.0
print(f"{'preset':8s} {'loss':>8s}  grad on long / short sequence (sum over tokens)")
for preset in ["grpo", "dapo", "dr_grpo", "gspo", "cispo", "ppo"]:
    cfg = LossConfig(preset=preset, kl_coef=0.0)
    logprobs = old.clone().requires_grad_()  # on-policy (first epoch): every ratio is 1
    x = LossInputs(
        logprobs=logprobs,
        old_logprobs=old,
        advantages=torch.tensor([1.0, -1.0]),
        mask=mask,
        total_tokens=float(mask.sum()),
        total_sequences=2.0,
        max_len=6.0,
        truncated=torch.tensor([False, False]),
    )
    loss, metrics = build_policy_loss(cfg)(x)
    loss.backward()
    g = (logprobs.grad * mask).sum(-1)
    print(f"{preset:8s} {loss.item():8.4f}  {g[0].item():+.4f} / {g[1].item():+.4f}")
