"""The training loop: SFT warm-up, then GRPO steps that read as the flow in DESIGN.md.

    curriculum.sample -> rollout.generate -> rewards.score -> advantages -> curriculum.update
    -> losses -> balancer.combine (backward) -> stability -> optimizer.step -> log/eval/save

The trainer only wires components; each owns its state (``state_dict()``), and the
checkpoint gathers them so a restarted run resumes exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerl import checkpoint as ckpt
from steerl import distributed as ddp
from steerl import fsdp
from steerl.config import Config, ConfigError, RewardSpec
from steerl.curriculum import build_curriculum, curriculum_metrics, sample_groups
from steerl.curriculum.filters import rebalance
from steerl.evaluation import accuracy_by_level, prompt_fields
from steerl.logging import ConsoleProgress, MetricLogger
from steerl.logprobs import completion_logprobs, head_grad_into_param
from steerl.losses import (
    LossInputs,
    build_aux_terms,
    build_policy_loss,
    kl_estimate,
    loss_requirements,
    sft_loss,
)
from steerl.losses.aux_batch import (
    AuxBatch,
    aux_term_value,
    build_aux_batch,
    teacher_forcing_batch,
)
from steerl.losses.base import loss_mask
from steerl.models import load_policy, make_reference, reference_view
from steerl.objectives import build_balancer, build_combiner
from steerl.objectives.advantages import compute_advantages
from steerl.objectives.balancers import Balancer
from steerl.rewards import build_rewards
from steerl.rollout import (
    Rollout,
    decode_completions,
    encode_prompts,
    generate,
    resolve_backend,
    resolve_kernels,
)
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


class Callback:
    """Hooks into the loop; override what you need. ``trainer.should_stop = True`` stops."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None: ...
    def on_evaluate(self, trainer: Trainer, step: int, accuracy: dict[str, float]) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


@dataclass
class TrainerState:
    """Progress of the run (saved in trainer_state.json)."""

    global_step: int = 0  # warm-up steps + RL steps done
    warmup_step: int = 0
    rl_step: int = 0
    warmup_eval: dict[str, float] | None = None  # greedy accuracy per level after warm-up
    final_eval: dict[str, float] | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0  # accumulated over resumed segments
    generated_tokens: int = 0  # completion tokens sampled in RL steps
    generate_seconds: float = 0.0  # time spent sampling them
    stop_reason: str | None = None  # why the run stopped before train.steps (early stop, ...)


#: The frozen reference RL started from, saved in the run directory after a warm-up.
REFERENCE_FILE = "reference.safetensors"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
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
        # sharded layers: multi-tensor kernels (on CUDA by default; forced here so the CPU
        # tests take the same path) need groups that do not mix sharded and whole tensors
        foreach = True if ddp.sharded() else None
        if phase == "warmup":
            params = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
            params = fsdp.split_groups(params) if ddp.sharded() else params
            return torch.optim.AdamW(
                params, lr=self.cfg.warmup.lr, weight_decay=0.0, foreach=foreach
            )
        # schedule.param_groups: named groups with their own lr_scale (e.g. LoRA vs head)
        params = param_groups(self.model, self.cfg.schedule, o.lr)
        params = fsdp.split_groups(params) if ddp.sharded() else params
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
        # fused on CUDA: one kernel per step and no parameter-sized temporaries (foreach has)
        fused = True if self.device.type == "cuda" and not ddp.sharded() else None
        return cls(
            params,
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            weight_decay=o.weight_decay,
            fused=fused,
            foreach=foreach,
        )

    @property
    def phase(self) -> str:
        return "warmup" if self.state.warmup_step < self.cfg.warmup.steps else "rl"

    @property
    def total_steps(self) -> int:
        return self.cfg.warmup.steps + self.cfg.train.steps

    def _generators(self) -> dict[str, torch.Generator]:
        """This rank's generators under their checkpoint names (rank r > 0: sampler_rank<r>)."""
        r = ddp.rank()
        return {"sampler" if r == 0 else f"sampler_rank{r}": self.sampler}

    def _all_generators(self) -> dict[str, torch.Generator]:
        """Every rank's generators, for rank 0 to write (one process: its own)."""
        states = ddp.all_gather_objects(self.sampler.get_state())
        out = {"sampler": self.sampler}
        for r, st in enumerate(states[1:], start=1):
            out[f"sampler_rank{r}"] = torch.Generator(self.sampler.device).set_state(st)
        return out

    def component_states(self) -> dict[str, Any]:
        return {
            "curriculum": self.curriculum.state_dict(),
            "balancer": self.balancer.state_dict(),
            "stability": self.stability.state_dict(),
            "kl_controller": self.kl_ctl.state_dict() if self.kl_ctl else None,
            "demo_rng": ckpt.rng_to_json(self.demo_rng),
        }

    # ------------------------------------------------------------------ resume / save
    def resume(self) -> bool:
        """Restore the newest complete checkpoint in the run directory, if any."""
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            return False
        state = ckpt.load_checkpoint(path, self.model, self._generators())
        comps = state["components"]
        self.curriculum.load_state_dict(comps["curriculum"])
        self.balancer.load_state_dict(comps["balancer"])
        self.stability.load_state_dict(comps["stability"])
        if self.kl_ctl is not None and comps.get("kl_controller"):
            self.kl_ctl.load_state_dict(comps["kl_controller"])
        self.demo_rng.setstate(ckpt.rng_from_json(comps["demo_rng"]))
        self.state = TrainerState(**state["trainer"])
        self.optimizer = self._make_optimizer(self.phase)
        ckpt.load_optimizer(path, self.optimizer)
        self._restore_reference()
        return True

    # ------------------------------------------------------------------ reference (KL, DPO)
    def _start_reference(self) -> None:
        """After a warm-up, the reference becomes the policy RL starts from (kept on disk)."""
        if self.reference is None:
            return
        from safetensors.torch import save_model

        self.reference.load_state_dict(self.model.state_dict())
        whole = fsdp.full_state_dict(self.reference) if ddp.sharded() else None
        if ddp.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.run_dir / f".tmp-{REFERENCE_FILE}"
            if whole is None:
                save_model(self.reference, str(tmp))
            else:
                ckpt.save_state(whole, tmp)
            os.replace(tmp, self.run_dir / REFERENCE_FILE)
        ddp.barrier()

    def _restore_reference(self) -> None:
        """On resume into RL after a warm-up: the reference saved when RL started."""
        if self.reference is None or not self.cfg.warmup.steps or self.phase != "rl":
            return
        path = self.run_dir / REFERENCE_FILE
        if path.is_file():
            from safetensors.torch import load_model

            if ddp.sharded():
                fsdp.load_full_state_dict(self.reference, ckpt.load_file(path))
            else:
                load_model(self.reference, str(path), strict=False)
            return
        if self.state.rl_step:
            warnings.warn(
                f"{path} is missing (no reference was needed when RL started): the KL/DPO "
                "reference is the resumed policy, not the one RL started from",
                stacklevel=2,
            )
        self._start_reference()  # resumed at the warm-up/RL boundary: the same weights

    def save(self) -> Path:
        """Rank 0 writes the checkpoint (with every rank's sampler); the others wait for it."""
        generators = self._all_generators()
        path = self.run_dir / ckpt.CKPT_DIR / f"step_{self.state.global_step}"
        whole = {}  # sharded layers: every rank takes part in gathering the whole tensors
        if ddp.sharded():
            whole = {
                "model_state": fsdp.full_state_dict(self.model),
                "optimizer_state": fsdp.full_optimizer_state(self.optimizer),
            }
        if ddp.is_main():
            path = ckpt.save_checkpoint(
                self.run_dir,
                self.state.global_step,
                self.model,
                self.tokenizer,
                self.optimizer,
                {"trainer": asdict(self.state), "components": self.component_states()},
                generators,
                keep=self.cfg.train.keep_checkpoints,
                **whole,
            )
        ddp.barrier()
        return path

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

    def _rollback(self, reason: str) -> int | None:
        """Restore weights, optimizer and components from the newest checkpoint.

        Step counters, the stability manager and the samplers keep going, and the curriculum
        reshuffles: the run continues from the last good weights with different data.
        Returns the checkpoint's step, or ``None`` (nothing to roll back to: a skip).
        """
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            return None
        ckpt.load_weights(path, self.model)  # full weights, or the LoRA adapter
        ckpt.load_optimizer(path, self.optimizer)
        comps = ckpt.read_trainer_state(path)["components"]
        self.curriculum.load_state_dict(comps["curriculum"])
        self.balancer.load_state_dict(comps["balancer"])
        reshuffle = getattr(self.curriculum, "reshuffle", None)
        if reshuffle is not None:
            reshuffle(self.stability.rollbacks + 1)
        self.stability.on_rollback()  # counts; raises StabilityError past max_rollbacks
        return int(path.name.split("_", 1)[1])

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
            chat_template=cfg.model.chat_template,
        )

    # ------------------------------------------------------------------ the run
    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        main = ddp.is_main()  # under torchrun rank 0 alone writes the run directory
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
            # which parameters get aggregated gradients and which the plain weighted sum
            (self.run_dir / "balancer.json").write_text(
                json.dumps(self.balancer.describe(), indent=1, default=str)
            )
        ddp.barrier()
        resumed = self.resume()
        logger = (MetricLogger if main else _NullLogger)(
            self.run_dir,
            cfg.logging,
            cfg.model_dump(mode="json"),
            resume_step=self.state.global_step if resumed else None,
        )
        start = time.perf_counter() - self.state.wall_seconds
        for cb in self.callbacks:
            cb.on_train_start(self)
        progress = ConsoleProgress(enabled=cfg.logging.progress and main)
        try:
            with progress:
                self._loop(logger, progress, start)
        finally:
            logger.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.summary()

    def _loop(self, logger: MetricLogger, progress: ConsoleProgress, start: float) -> None:
        cfg = self.cfg
        if self.phase == "warmup":
            progress.set_phase("warm-up (SFT)", cfg.warmup.steps)
            progress.update(advance=self.state.warmup_step)
        while self.state.warmup_step < cfg.warmup.steps and not self._stop():
            m = self.warmup_step()
            if self.state.warmup_step == cfg.warmup.steps:  # evaluate before the boundary save
                self.state.warmup_eval = self._eval_and_log(
                    logger, "warmup", step=self.state.global_step + 1
                )
            self._after_step(logger, m, start)
            progress.update(loss=m["warmup/loss"])
        if self._stop():
            return
        stopped = self.state.stop_reason is not None  # a monitor ended it: finished, even resumed
        if self.state.rl_step < cfg.train.steps and not stopped:
            self.state.final_eval = None  # a resumed run asked for more RL steps
        progress.set_phase("GRPO", cfg.train.steps)
        progress.update(advance=self.state.rl_step)
        while self.state.rl_step < cfg.train.steps and not stopped and not self._stop():
            m = self.rl_step()
            if (
                cfg.train.eval_every
                and self.state.rl_step % cfg.train.eval_every == 0
                and self.state.rl_step < cfg.train.steps
            ):
                # rl_step has advanced but global_step not yet (_after_step below)
                acc = self._eval_and_log(logger, "rl", step=self.state.global_step + 1)
                m.update({f"eval/accuracy/level_{k}": v for k, v in acc.items()})
            self._after_step(logger, m, start)
            progress.update(reward=m["train/reward"])
        if self._stop() and self.state.stop_reason is None:
            return  # stop_after or a callback: as if killed, resumable
        if self.state.final_eval is None:
            self.state.final_eval = self._eval_and_log(logger, "final")
            self.state.wall_seconds = time.perf_counter() - start
            self.save()
        if not ddp.is_main():
            return
        self._write_summary()
        if cfg.logging.report:
            from steerl.report import build_report

            build_report(self.run_dir)

    def _stop(self) -> bool:
        sa = self.cfg.train.stop_after
        return self.should_stop or (sa is not None and self.state.global_step >= sa)

    def _eval_and_log(
        self, logger: MetricLogger, tag: str, step: int | None = None
    ) -> dict[str, float]:
        step = self.state.global_step if step is None else step
        acc = self.evaluate()
        self.state.evals.append({"step": step, "tag": tag, "accuracy": acc})
        named = {f"eval/accuracy/level_{k}": v for k, v in acc.items()}
        logger.log(step, named | {"eval/tag": tag})
        for cb in self.callbacks:
            cb.on_evaluate(self, step, acc)
        if tag == "rl" and self.stability.observe_eval(named, step):
            self._request_stop(self.stability.stop_reason or "early stopping")
        return acc

    def _after_step(self, logger: MetricLogger, m: dict[str, Any], start: float) -> None:
        self.state.global_step += 1
        step = self.state.global_step
        self.state.wall_seconds = time.perf_counter() - start
        logger.log(step, m)
        if getattr(self, "_samples", None):
            logger.log_samples(step, self._samples)
            self._samples = None
        for cb in self.callbacks:
            cb.on_step_end(self, step, m)
        self.should_stop = ddp.any_rank(self.should_stop)  # a stop on one rank stops all
        se = self.cfg.train.save_every
        boundary = self.state.warmup_step == self.cfg.warmup.steps and self.state.rl_step == 0
        if (se and step % se == 0) or boundary:
            self.save()

    def summary(self) -> dict[str, Any]:
        return {
            "recipe": self.cfg.recipe,
            "run_dir": str(self.run_dir),
            "wall_seconds": round(self.state.wall_seconds, 2),
            "steps": self.state.global_step,
            "warmup_steps": self.state.warmup_step,
            "rl_steps": self.state.rl_step,
            "warmup": self.state.warmup_eval,
            "final": self.state.final_eval,
            "completed": self.state.final_eval is not None,
            "stop_reason": self.state.stop_reason,
            "stability": self.stability.health(),
            "generate_tokens_per_s": round(
                self.state.generated_tokens / max(self.state.generate_seconds, 1e-9), 1
            ),
        }

    def _write_summary(self) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(self.summary(), indent=1))


class _NullLogger:
    """The metric sinks of ranks other than 0 under torchrun: nothing is written."""

    def __init__(self, *args: Any, **kwargs: Any): ...
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...
    def log_samples(self, step: int, samples: Any) -> None: ...
    def close(self) -> None: ...


def _f(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v
