"""The training loop: SFT warm-up, then GRPO steps that read as the flow in DESIGN.md.

    curriculum.sample -> rollout.generate -> rewards.score -> advantages -> curriculum.update
    -> losses -> balancer.combine (backward) -> stability -> optimizer.step -> log/eval/save

The trainer only wires components; each owns its state (``state_dict()``), and the
checkpoint gathers them so a restarted run resumes exactly.

``Trainer.rl_step`` here reads as that flow; the machinery behind its stages sits beside it:
:mod:`steerl.update` (losses -> balancer -> stability -> optimizer),
:mod:`steerl.trainer_state` (progress, checkpoint, resume, reference, rollback) and
:mod:`steerl.run_loop` (``train()``: the steps, evaluation, logging, saving).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerl import distributed as ddp
from steerl import fsdp
from steerl.config import Config, ConfigError, RewardSpec
from steerl.curriculum import build_curriculum, curriculum_metrics, sample_groups
from steerl.evaluation import accuracy_by_level, prompt_fields
from steerl.logprobs import completion_logprobs
from steerl.losses import build_aux_terms, build_policy_loss, loss_requirements, sft_loss
from steerl.losses.aux_batch import teacher_forcing_batch
from steerl.models import load_policy, make_reference
from steerl.objectives import build_balancer, build_combiner
from steerl.objectives.advantages import compute_advantages
from steerl.rewards import build_rewards
from steerl.rollout import (
    Rollout,
    decode_completions,
    encode_prompts,
    generate,
    resolve_backend,
    resolve_kernels,
)
from steerl.run_loop import RunLoopMixin
from steerl.schedules import (
    AdaptiveKLController,
    WarmupDecay,
    coef_schedules,
    lr_schedule,
    param_groups,
    parse_coef_key,
)
from steerl.stability import StabilityManager, grad_norm_and_clip
from steerl.tasks import Prompt, build_task
from steerl.trainer_state import REFERENCE_FILE, CheckpointMixin, TrainerState
from steerl.update import UpdateMixin

__all__ = ["REFERENCE_FILE", "Callback", "Trainer", "TrainerState", "set_seed"]


class Callback:
    """Hooks into the loop; override what you need. ``trainer.should_stop = True`` stops."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None: ...
    def on_evaluate(self, trainer: Trainer, step: int, accuracy: dict[str, float]) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer(RunLoopMixin, CheckpointMixin, UpdateMixin):
    """An optional SFT warm-up, then RL steps; ``train()`` runs it all.

    The step flow is here (:meth:`warmup_step`, :meth:`rl_step`); the run loop, the
    checkpoint/resume/reference handling and the policy update come from the mixins.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, callbacks: list[Callback] | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks or [])
        self.should_stop = False
        # data-parallel under torchrun: join the process group, refuse what would not add up
        ddp.init(cfg.train.distributed, cfg.model.device)
        problems = loss_requirements(cfg) + ddp.check_config(cfg, ddp.world_size())
        if problems:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
        threads = cfg.train.threads or min(4, torch.get_num_threads())
        torch.set_num_threads(threads)
        set_seed(cfg.train.seed)  # the same on every rank: identical initial weights

        # Components, each owning one job and its state.
        self.task = build_task(cfg)
        self.rewards = build_rewards(cfg.rewards)
        eval_spec = cfg.rewards[0]
        self.eval_rewards = build_rewards([RewardSpec(name=eval_spec.name, args=eval_spec.args)])
        self.policy = load_policy(cfg.model)
        self.model = self.policy.model
        self.tokenizer = self.policy.tokenizer
        self.device = self.policy.device
        # make_reference's kl argument only decides whether model.reference=auto builds one;
        # with LoRA and no warm-up the reference is the policy with its adapters disabled
        self.reference = make_reference(
            self.policy,
            cfg.model,
            float(cfg.loss.needs_reference),
            base_is_start=not cfg.warmup.steps,
        )
        self.sampler_backend = resolve_backend(cfg.rollout.backend, self.model)  # eager|static
        self.sampler_kernels = resolve_kernels(  # torch|triton
            cfg.rollout.kernels, self.model, self.sampler_backend
        )
        self.rollout_weights: fsdp.RolloutWeights | None = None
        if ddp.sharded():  # train.distributed=fsdp: decoder layers sharded over the ranks
            if self.sampler_backend == "static":  # it reads whole layers: a whole copy
                self.rollout_weights = fsdp.RolloutWeights(self.model)
            fsdp.shard_layers(self.model)
            if self.reference is not None:
                fsdp.shard_layers(self.reference)
        self.loss = build_policy_loss(cfg.loss)  # the "policy" term
        self.aux_terms = build_aux_terms(cfg.loss)  # loss.aux: further named terms
        # objectives: rewards -> training signal (combiner); loss terms -> gradient (balancer)
        self.combiner = build_combiner(cfg.objectives, estimator=cfg.loss.advantage)
        self.balancer = build_balancer(
            cfg.objectives,
            model=self.model,
            total_steps=cfg.train.steps,
            term_names=["policy", *[t.name for t in self.aux_terms]],
        )
        self.curriculum = build_curriculum(
            cfg.curriculum, self.task.train, cfg.train.seed, total_steps=cfg.train.steps
        )
        self.stability = StabilityManager(cfg.stability, cfg.train.steps)
        self.lr_schedule = lr_schedule(cfg.schedule, cfg.train.steps)
        self.coefs = coef_schedules(cfg.schedule, cfg.train.steps)  # loss/reward coefficients
        self.kl_ctl = (
            AdaptiveKLController.from_config(cfg.schedule.kl_controller, cfg.loss.kl_coef)
            if cfg.schedule.kl_controller is not None
            else None
        )
        if ddp.is_active():  # each rank's term values are a share: adaptive weights see sums
            self.balancer.loss_reduce = ddp.all_sum
        # each rank samples its own completions; curriculum and demo draws are global
        self.sampler = torch.Generator(device=self.device).manual_seed(cfg.train.seed + ddp.rank())
        self.demo_rng = random.Random(cfg.train.seed + 1)
        self.state = TrainerState()
        self.optimizer = self._make_optimizer("warmup" if cfg.warmup.steps else "rl")

    # ------------------------------------------------------------------ setup helpers
    def _make_optimizer(self, phase: str) -> torch.optim.Optimizer:
        o = self.cfg.optim
        # sharded layers: groups that do not mix sharded and whole tensors (torch's
        # multi-tensor kernels refuse the mix); SGD's multi-tensor path is forced so the CPU
        # tests take the CUDA path
        foreach = True if ddp.sharded() else None
        # AdamW fused (one kernel per step, no parameter-sized temporaries; multi-tensor AdamW
        # cost 6.7 GiB more peak per GPU on a 14B model under FSDP): on CUDA, and under
        # sharding on the CPU too, so the CPU tests take the sharded CUDA path
        fused = True if self.device.type == "cuda" or ddp.sharded() else None
        if phase == "warmup":
            params = fsdp.split_groups(
                [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
            )
            return torch.optim.AdamW(params, lr=self.cfg.warmup.lr, weight_decay=0.0, fused=fused)
        # schedule.param_groups: named groups with their own lr_scale (e.g. LoRA vs head)
        params = fsdp.split_groups(param_groups(self.model, self.cfg.schedule, o.lr))
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, foreach=foreach)
        if o.name == "adafactor":
            # one tensor at a time: temporaries of the largest parameter, not of all of them
            return torch.optim.Adafactor(
                params,
                lr=o.lr,
                beta2_decay=o.beta2_decay,
                d=o.clip_threshold,
                weight_decay=o.weight_decay,
                foreach=False,
            )
        cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        return cls(
            params,
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            weight_decay=o.weight_decay,
            fused=fused,
        )

    @property
    def phase(self) -> str:
        return "warmup" if self.state.warmup_step < self.cfg.warmup.steps else "rl"

    @property
    def total_steps(self) -> int:
        return self.cfg.warmup.steps + self.cfg.train.steps

    # ------------------------------------------------------------------ batches
    def make_batch(self, prompts: list[str], completions: list[str]) -> Rollout:
        """Teacher-forcing batch: prompts left-padded, completions + EOS right-padded."""
        return teacher_forcing_batch(
            self.tokenizer, prompts, completions, self.device, self.cfg.model.chat_template
        )

    # ------------------------------------------------------------------ warm-up (SFT)
    def warmup_step(self) -> dict[str, Any]:
        """One SFT step on demonstrations of the warm-up levels."""
        w = self.cfg.warmup
        pool = self._warmup_pool()
        prompts = [pool[self.demo_rng.randrange(len(pool))] for _ in range(w.batch_size)]
        demos = [self.task.demonstration(p, self.demo_rng) for p in prompts]
        # under torchrun: the same draw on every rank, each trains on its slice
        prompts, demos = ddp.shard(prompts), ddp.shard(demos)
        batch = self.make_batch([p.text for p in prompts], demos)
        lr = w.lr * WarmupDecay(w.schedule, w.steps, 0, w.min_lr_ratio).value(
            self.state.warmup_step
        )
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        lp, _ = completion_logprobs(self.model, batch)
        (tokens,) = ddp.all_sum([float(batch.completion_mask.sum())])
        loss, _ = sft_loss(lp, batch.completion_mask, tokens)
        loss.backward()
        ddp.all_reduce_grads(self.model.parameters())
        pre, _ = grad_norm_and_clip(self.model.parameters(), self.cfg.stability.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # no gradients held between steps
        self.state.warmup_step += 1
        if self.state.warmup_step == w.steps:  # RL starts with its own optimizer (as on resume)
            self.optimizer = self._make_optimizer("rl")
            self._start_reference()
        return {
            "phase": "warmup",
            "warmup/loss": ddp.all_sum([float(loss.detach())])[0],
            "warmup/lr": lr,
            "warmup/grad_norm": pre,
        }

    def _warmup_pool(self) -> list[Prompt]:
        if not hasattr(self, "_pool"):
            levels = set(self.cfg.warmup.levels)
            self._pool = [p for p in self.task.train if p.level in levels] or self.task.train
        return self._pool

    # ------------------------------------------------------------------ one RL step
    def rl_step(self) -> dict[str, Any]:
        cfg, step = self.cfg, self.state.rl_step
        B, G = cfg.rollout.prompts_per_step, cfg.rollout.group_size
        m: dict[str, Any] = {"phase": "rl"}

        # 0. schedules: learning rate and scheduled coefficients for this step
        lr = self._set_lr(step)
        reward_weights = self._apply_coefficients(step, m)

        # 1-3. curriculum -> rollout -> rewards: B prompts, G completions each, scored. With
        #      DAPO dynamic sampling, rounds of further prompts refill the groups whose rewards
        #      do not vary (curriculum.max_refill_rounds; steerl.curriculum.filters)
        #      (judged on what the advantages come from: objectives.combine and preference)
        #      Under torchrun every rank draws the same prompts and takes its share of them.
        groups = sample_groups(
            sample=lambda n: ddp.shard(self.curriculum.sample(n, step)),
            generate=self._generate,
            score=lambda prompts, comps: self._score(prompts, comps, step, reward_weights),
            batch_size=B,
            group_size=G,
            cfg=cfg.curriculum,
            pad_token_id=self.tokenizer.pad_token_id,
            signal=lambda s: self.combiner.signal(s.scores, reward_weights(s), G),
        )
        batch, reward, scored = groups.batch, groups.reward, groups.scored
        texts, completions, t_gen = groups.texts, groups.completions, groups.generate_seconds

        # 4. advantages: objectives.combine turns the reward columns into the training signal
        #    (weighted sum by default; GDPO, Tchebycheff toward objectives.preference), with
        #    loss.kl_in=reward the sequence KL is subtracted, then loss.advantage normalises
        adv, ref_lp, kl_metrics = self._advantages(batch, scored, reward_weights)

        # 5. curriculum update with what every sampled group taught us (dropped ones too):
        #    the first reward's scores (pass rates) and the advantages, (groups, G) each,
        #    gathered from every rank in rank order (the order of the global draw)
        prompt_ids = [i for part in ddp.all_gather_objects(groups.prompt_ids) for i in part]
        self.curriculum.update(
            prompt_ids,
            ddp.cat_ranks(groups.pass_rewards()),
            step,
            advantages=ddp.cat_ranks(adv.view(-1, G)),
        )
        all_reward = ddp.cat_ranks(reward)  # the whole batch's rewards, for metrics

        # 6. train on the informative groups only (at most B, chosen in 1-3); under torchrun
        #    with dynamic sampling the kept groups are dealt out again in equal shares
        rows, kept = groups.kept_rows(), groups.kept_prompts()
        train = (
            batch.index(rows),
            adv[rows],
            None if ref_lp is None else ref_lp[rows],
            reward[rows],
            kept,
        )
        if ddp.is_active() and cfg.curriculum.drop_zero_variance:
            train = self._rebalance(*train)
        t_batch, t_adv, t_ref, t_reward, kept = train

        # 7-9. losses -> balancer (backward) -> stability -> optimizer
        t1 = time.perf_counter()
        update = {}
        if len(kept):
            update = self._policy_update(
                t_batch,
                t_adv,
                ref_lp=t_ref,
                aux=self._aux_batch(t_reward, kept),
                step=step,
                lr=lr,
                reward=all_reward,
            )
        t_upd = time.perf_counter() - t1

        self.state.rl_step += 1
        (tokens,) = ddp.all_sum([float(batch.num_tokens)])  # generated on all ranks
        t_gen = max(ddp.all_gather_objects(t_gen))  # the ranks generate side by side
        self.state.generated_tokens += int(tokens)
        self.state.generate_seconds += t_gen
        scored_r = all_reward[~all_reward.isnan()]
        m.update(
            {
                "train/reward": float(scored_r.mean()) if len(scored_r) else float("nan"),
                "train/reward_std": float(scored_r.std()) if len(scored_r) > 1 else 0.0,
                "train/unscored": float(all_reward.isnan().float().mean()),
                "train/kept_groups": groups.metrics["curriculum/kept_groups"] / B,
                "train/completion_length": float(batch.completion_mask.sum(-1).float().mean()),
                "train/truncated": float(batch.truncated.float().mean()),
                "train/lr": lr,
                "time/generate_s": t_gen,
                "time/update_s": t_upd,
                "time/generate_tokens_per_s": tokens / max(t_gen, 1e-9),
            }
        )
        m.update({f"train/{k}": v for k, v in scored.metrics.items()})
        m.update(kl_metrics)
        m.update(groups.metrics | curriculum_metrics(self.curriculum))
        m.update(update)
        m = ddp.mean_metrics(m)  # under torchrun: every rank reads the same (global) metrics

        # 10. stability monitors that read the whole step (plateau, late guards), KL control
        m.update(self.stability.step_metrics(step))
        if self.stability.observe_train(m, step):
            self._request_stop(self.stability.stop_reason or "stability monitor")
        if self.kl_ctl is not None and "train/kl" in m:
            m["train/kl_coef"] = self.kl_ctl.update(float(m["train/kl"]))
        if cfg.logging.samples_every and step % cfg.logging.samples_every == 0:
            self._samples = [
                {"prompt": texts[i], "completion": completions[i], "reward": _f(reward[i])}
                for i in range(0, len(texts), G)[:4]
            ]
        return m

    # ------------------------------------------------------------------ rollout / rewards
    def _sampling_model(self) -> torch.nn.Module:
        """The model rollouts and evaluation decode with: the policy, or under sharded layers
        with the static sampler its whole copy, refreshed now (a collective on every rank)."""
        if self.rollout_weights is None:
            return self.model
        return self.rollout_weights.refresh(self.model)

    def _generate(self, prompts: list[Prompt]) -> tuple[Rollout, list[str]]:
        """G sampled completions per prompt: the rollout (groups of G rows) and their texts."""
        cfg, G = self.cfg, self.cfg.rollout.group_size
        texts = [p.text for p in prompts for _ in range(G)]
        p_ids, p_mask = encode_prompts(self.tokenizer, texts, self.device, cfg.model.chat_template)
        batch = generate(
            self._sampling_model(),
            p_ids,
            p_mask,
            max_new_tokens=cfg.rollout.max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            generator=self.sampler,
            backend=self.sampler_backend,
            compile=cfg.rollout.compile,
            kernels=self.sampler_kernels,
            pdl=cfg.rollout.pdl,
            ignore_eos=cfg.rollout.ignore_eos,
        )
        return batch, decode_completions(self.tokenizer, batch)

    def _advantages(self, batch: Rollout, scored, reward_weights):
        """(advantages (N,), reference logprobs or None, KL metrics) from the reward columns."""
        G = self.cfg.rollout.group_size
        w = reward_weights(scored)
        if self.combiner.returns == "advantage":  # GDPO normalises per reward itself
            return self.combiner(scored.scores, w, G), None, {}
        signal = self.combiner(scored.scores, w, G)
        shaped, ref_lp, kl_metrics = self._kl_shaped_reward(batch, signal)
        return compute_advantages(shaped, G, self.cfg.loss.advantage), ref_lp, kl_metrics

    def _score(self, prompts: list[Prompt], completions: list[str], step: int, reward_weights):
        """One column per named reward, combined into one scalar per sample: (reward, scored).

        The reward is the one training maximises (``objectives.combine`` with
        ``objectives.preference`` when set; for GDPO the weighted sum): ``train/reward``.
        """
        G = self.cfg.rollout.group_size
        rows = [p for p in prompts for _ in range(G)]
        scored = self.rewards.score([p.text for p in rows], completions, prompt_fields(rows), step)
        return self.combiner.reward(scored.scores, reward_weights(scored), G), scored

    # ------------------------------------------------------------------ schedules / control
    def _set_lr(self, step: int, lr_scale: float | None = None) -> float:
        """Scheduled LR x stability's scale (lower_lr, plateau) x each group's lr_scale."""
        scale = self.stability.lr_scale(step) if lr_scale is None else lr_scale
        lr = self.cfg.optim.lr * self.lr_schedule.value(step) * scale
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def _apply_coefficients(self, step: int, m: dict[str, Any]):
        """Set this step's scheduled loss coefficients; return the reward-weights function.

        ``schedule.coefficients`` keys: ``loss.<field>`` (e.g. ``loss.kl_coef``) and
        ``rewards.<label>.weight``; the adaptive KL controller sets ``loss.kl_coef``.
        """
        loss_update: dict[str, float] = {}
        reward_update: dict[str, float] = {}
        for key, sched in self.coefs.items():
            section, name = parse_coef_key(key)
            value = sched.value(step)
            (loss_update if section == "loss" else reward_update)[name] = value
            m[f"coef/{key}"] = value
        if self.kl_ctl is not None:
            loss_update["kl_coef"] = self.kl_ctl.value()
            m["coef/loss.kl_coef"] = loss_update["kl_coef"]
        if loss_update:
            self.loss.cfg = self.cfg.loss.model_copy(update=loss_update)

        def weights(scored) -> torch.Tensor:
            w = scored.weights.clone()
            for label, value in reward_update.items():
                w[scored.names.index(label)] = value
            return w

        return weights

    def _request_stop(self, reason: str) -> None:
        self.should_stop = True
        self.state.stop_reason = reason

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy on the held-out prompts, per difficulty level.

        Decodes with the rollout's sampler backend (``rollout.backend``; see
        :mod:`steerl.evaluation`); under torchrun each rank decodes a share.
        """
        cfg = self.cfg
        lockstep = ddp.sharded() and self.rollout_weights is None
        return accuracy_by_level(
            self._sampling_model(),
            self.tokenizer,
            # sharded layers gather on every rank: each decodes all prompts in step
            self.task.eval if lockstep else ddp.shard_uneven(self.task.eval),
            self.eval_rewards,
            max_new_tokens=cfg.rollout.eval_max_new_tokens or cfg.rollout.max_new_tokens,
            backend=self.sampler_backend,
            kernels=self.sampler_kernels,
            pdl=cfg.rollout.pdl,
            chat_template=cfg.model.chat_template,
        )


def _f(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v
