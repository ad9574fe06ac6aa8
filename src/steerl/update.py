"""The policy update of one RL step: losses -> balancer (backward) -> stability -> optimizer.

:class:`UpdateMixin` gives :class:`steerl.trainer.Trainer` the micro-batched loss terms
(policy and ``loss.aux``), the balancer that does the backward, stability's clip and
verdict, and the optimizer step; with the reference log-probs and the KL-shaped reward
(``loss.kl_in=reward``) they need, and the torchrun rebalancing of the kept groups.
"""

from __future__ import annotations

from typing import Any

import torch

from steerl import distributed as ddp
from steerl.curriculum.filters import rebalance
from steerl.logprobs import completion_logprobs, head_grad_into_param
from steerl.losses import LossInputs, kl_estimate
from steerl.losses.aux_batch import AuxBatch, aux_term_value, build_aux_batch
from steerl.losses.base import loss_mask
from steerl.models import reference_view
from steerl.objectives.balancers import Balancer
from steerl.rollout import Rollout
from steerl.tasks import Prompt


class UpdateMixin:
    """Steps 7-9 of :meth:`steerl.trainer.Trainer.rl_step`, with what they need.

    Reads the trainer's ``cfg``, ``model``, ``reference``, ``loss``, ``aux_terms``,
    ``balancer``, ``stability`` and ``optimizer``; calls its ``_set_lr``, ``_rollback`` and
    ``_request_stop``.
    """

    # ------------------------------------------------------------------ reference log-probs
    def _kl_shaped_reward(
        self, batch: Rollout, reward: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """``(reward - kl_coef * sum_t k(pi, ref), ref logprobs, metrics)`` with kl_in=reward.

        Otherwise the reward itself, ``None``, ``{}``. The sum runs over each completion's
        tokens with ``loss.kl_estimator`` (k1 unless set). The reference log-probs are returned
        so the policy update does not compute them again.
        """
        lc = self.cfg.loss
        if lc.kl_in != "reward" or lc.kl_coef == 0 or self.reference is None:
            return reward, None, {}
        plan = self._micro_batches(batch.completion_ids.shape[0])
        lp = self._logprobs_no_grad(self.model, batch, plan)
        ref_lp = self._logprobs_no_grad(self.reference, batch, plan)
        kl = (kl_estimate(lp, ref_lp, lc.kl_estimator) * batch.completion_mask).sum(-1)
        kl = kl.to(reward.device, reward.dtype)
        return reward - lc.kl_coef * kl, ref_lp, {"train/kl_reward": float(kl.mean())}

    def _micro_batches(self, n: int) -> list[torch.Tensor]:
        """Row indices of each micro-batch; whole groups when auxiliary terms need them."""
        mbs = self.cfg.loss.micro_batch_size
        if self.aux_terms:
            g = self.cfg.rollout.group_size
            mbs = max(1, mbs // g) * g
        return [torch.arange(i, min(i + mbs, n)) for i in range(0, n, mbs)]

    @torch.no_grad()
    def _logprobs_no_grad(
        self, model: torch.nn.Module, batch: Rollout, plan: list[torch.Tensor]
    ) -> torch.Tensor:
        with reference_view(model) as m:  # a frozen copy, or the LoRA policy, adapters off
            return torch.cat([completion_logprobs(m, batch.index(idx))[0] for idx in plan])

    # ------------------------------------------------------------------ the update
    def _rebalance(self, batch, adv, ref_lp, reward, kept):
        """Under torchrun: the kept groups of all ranks in equal shares (``filters.rebalance``)."""
        G, pad = self.cfg.rollout.group_size, self.tokenizer.pad_token_id
        return rebalance(batch, adv, ref_lp, reward, kept, G, pad, self.device)

    def _aux_batch(self, reward: torch.Tensor, prompts: list[Prompt]) -> AuxBatch | None:
        """Data of the ``loss.aux`` terms for the kept groups (``losses.aux_batch``)."""
        G = self.cfg.rollout.group_size
        return build_aux_batch(self.aux_terms, reward, prompts, G, self.make_batch)

    def _policy_update(
        self,
        batch: Rollout,
        adv: torch.Tensor,
        ref_lp: torch.Tensor | None = None,
        aux: AuxBatch | None = None,
        step: int = 0,
        lr: float = 0.0,
        reward: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Micro-batched loss terms, one optimizer step per epoch over the batch.

        Every micro-batch hands the balancer ``{"policy": loss, <aux name>: coef * term}``;
        all denominators count the whole batch, so the micro-batch gradients add up to the
        full-batch gradient.
        """
        lc = self.cfg.loss
        self.model.train()
        plan = self._micro_batches(batch.completion_ids.shape[0])
        mask = batch.completion_mask.float()
        # denominators over the global batch (summed over ranks under torchrun)
        lm = loss_mask(mask, batch.truncated, lc.mask_truncated)
        tokens, seqs, all_tokens = ddp.all_sum(
            [float(lm.sum()), float((lm.sum(-1) > 0).sum()), float(mask.sum())]
        )
        total_tokens, total_seqs = max(tokens, 1.0), max(seqs, 1.0)
        # importance ratios of later epochs are against the policy that sampled the batch
        old_lp = self._logprobs_no_grad(self.model, batch, plan) if lc.epochs > 1 else None
        if ref_lp is None and self.reference is not None:
            ref_lp = self._logprobs_no_grad(self.reference, batch, plan)
        out: dict[str, Any] = {}
        for _ in range(lc.epochs):
            self.optimizer.zero_grad(set_to_none=True)
            self.balancer.begin_step(step)
            try:
                sums, term_values = self._accumulate(
                    plan, batch, adv, old_lp, ref_lp, aux, (total_tokens, total_seqs, all_tokens)
                )
            except BaseException:
                self.balancer.abort_step()
                raise
            # under torchrun: each rank holds a share of the terms and of the gradient
            term_values, sums = ddp.sum_dicts(term_values), ddp.sum_dicts(sums)
            loss_sum = sum(term_values.values())
            # balancer: aggregate per-objective gradients (gradient-level balancers), weights
            weights = self.balancer.end_step()
            ddp.all_reduce_grads(self.model.parameters())  # sum over ranks (no-op alone)
            # stability: clip, then judge the update (non-finite, spikes, guards)
            clip = self.stability.clip(self.model.parameters())
            known = {f"train/{k}": v for k, v in sums.items()}
            if reward is not None and bool((~reward.isnan()).any()):
                known["train/reward"] = float(reward[~reward.isnan()].mean())
            decision = self.stability.check_update(
                loss_sum,
                clip.pre_norm,
                known,
                step=step,
                terms=term_values,
                named_params=self.model.named_parameters(),
            )
            out = {"train/loss": loss_sum, "stability/action": decision.action}
            out.update(clip.metrics())
            out.update(known)
            out.update({f"balancer/{k}": v for k, v in weights.items()})
            if hasattr(self.balancer, "conflicts"):  # gradient-level: cosines between terms
                out.update({f"balancer/{k}": v for k, v in self.balancer.conflicts().items()})
            if decision.action == "apply":
                self._set_lr(step, lr_scale=decision.lr_scale)
                self.optimizer.step()
                # free the gradients now: kept, they would sit through the next generation
                self.optimizer.zero_grad(set_to_none=True)
                continue
            self.optimizer.zero_grad(set_to_none=True)
            if decision.action == "rollback":
                out["stability/rolled_back_to"] = self._rollback(decision.reason)
            elif decision.action == "stop":
                self._request_stop(decision.reason)
            break  # a skipped, rolled-back or stopping update ends this batch's epochs
        return out

    def _accumulate(
        self,
        plan: list[torch.Tensor],
        batch: Rollout,
        adv: torch.Tensor,
        old_lp: torch.Tensor | None,
        ref_lp: torch.Tensor | None,
        aux: AuxBatch | None,
        denominators: tuple[float, float, float],
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Loss terms of every micro-batch, each handed to the balancer (which does backward).

        ``denominators``: the whole batch's (loss tokens, loss sequences, completion tokens).
        Returns ``(sums, term_values)``: the loss metrics and each term's value, over the step.
        """
        cfg, lc, G = self.cfg, self.cfg.loss, self.cfg.rollout.group_size
        total_tokens, total_seqs, all_tokens = denominators
        sums: dict[str, float] = {}
        term_values: dict[str, float] = {}
        # one plain backward per micro-batch (loss-level balancers): the LM head adds its
        # weight gradient into .grad in place (no second head-sized gradient at the peak)
        plain = type(self.balancer).combine is Balancer.combine
        with head_grad_into_param(plain):
            for idx in plan:
                mb = batch.index(idx)
                lp, ent = completion_logprobs(
                    self.model, mb, with_entropy=True, entropy_grad=lc.entropy_coef > 0
                )
                inputs = LossInputs(
                    logprobs=lp,
                    old_logprobs=lp.detach() if old_lp is None else old_lp[idx],
                    advantages=adv[idx],
                    mask=mb.completion_mask.float(),
                    total_tokens=total_tokens,
                    total_sequences=total_seqs,
                    ref_logprobs=None if ref_lp is None else ref_lp[idx],
                    entropy=ent,
                    max_len=float(cfg.rollout.max_new_tokens),
                    truncated=mb.truncated,
                )
                loss, metrics = self.loss(inputs)
                terms = {"policy": loss}
                for term in self.aux_terms:
                    value, term_metrics = aux_term_value(term, self.model, idx, inputs, aux, G)
                    terms[term.name] = term.coef * value
                    metrics.update({f"{term.name}/{k}": v for k, v in term_metrics.items()})
                self.balancer.tap(lp, ent)  # per-token tensors: per-term gradients in one pass
                self.balancer.combine(terms, self.model.parameters())
                for k, v in terms.items():
                    term_values[k] = term_values.get(k, 0.0) + float(v.detach())
                metrics["entropy"] = (ent.detach() * inputs.mask).sum() / all_tokens
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        return sums, term_values
