"""Data-parallel training (torchrun, gloo on the CPU): the same update as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steerl import distributed as ddp
from steerl.config import ConfigError, load_config

HERE = Path(__file__).parent
ROOT = HERE.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["auto", "fsdp"])
def test_one_update_on_two_ranks_equals_the_whole_batch_on_one(tmp_path, mode):
    """Each rank half the groups, global denominators, summed gradients: the same SFT step
    and RL step (two epochs, KL to the reference, entropy bonus, SFT and DPO auxiliary terms,
    micro-batches, uncertainty weights). ``fsdp``: the decoder layers (policy and reference)
    sharded over the two ranks, their gradients reduce-scattered."""
    worker = str(HERE / "ddp_worker.py")
    _run([sys.executable, worker, str(tmp_path / "one.pt")], tmp_path)
    _run([*TORCHRUN, "2", worker, str(tmp_path / "two.pt"), mode], tmp_path)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["params"] - one["start"]).abs().max() > 1e-3  # the update is not trivial
    torch.testing.assert_close(two["start"], one["start"])  # same initial weights
    # Adam amplifies float noise where a gradient is ~0; the updates themselves are ~1e-2
    torch.testing.assert_close(two["params"], one["params"], rtol=0, atol=1e-4)
    assert two["warmup_loss"] == pytest.approx(one["warmup_loss"], rel=1e-5)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-6)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    assert two["balancer"] == pytest.approx(one["balancer"], rel=1e-6)


@pytest.mark.parametrize(
    ("device", "mode"),
    [
        ("cpu", "auto"),
        ("cpu", "fsdp"),
        *[
            pytest.param(
                "cuda",
                mode,
                marks=pytest.mark.skipif(
                    torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL)"
                ),
            )
            for mode in ("auto", "fsdp")
        ],
    ],
)
def test_torchrun_train_writes_one_run_dir_and_resumes_exactly(
    tmp_path, tiny_overrides, device, mode
):
    """Rank 0 writes the run; with DAPO dynamic sampling (refill rounds on global counts), a
    run stopped mid-RL and resumed under torchrun logs what the uninterrupted run logged
    (every rank's sampler state is in the checkpoint). On CUDA: NCCL, one GPU per rank, the
    static sampler (``rollout.backend=auto``), float32 so resumed sums match to 1e-5.
    ``fsdp``: sharded layers gathered into whole checkpoints (weights, optimizer state, the
    KL reference) and cut back into shards on resume; rollouts on the CPU by the HF-forward
    sampler in lockstep, on CUDA by the static sampler on the whole rollout copy."""
    on_cuda = ["model.device=cuda", "model.dtype=float32"] if device == "cuda" else []
    fsdp = ["train.distributed=fsdp", "loss.kl_coef=0.05"] if mode == "fsdp" else []
    keys = [
        *tiny_overrides,
        *on_cuda,
        *fsdp,
        "curriculum.drop_zero_variance=true",  # refills decided on global counts, kept
        "curriculum.max_refill_rounds=2",  # groups dealt out again in equal shares
        "rewards.0.name=length_penalty",  # varies in some groups: refills, non-zero gradients
        "rewards.0.args={coef: 0.1, target: 5}",
        "train.steps=3",
        "train.save_every=1",
    ]
    cmd = [*TORCHRUN, "2", "-m", "steerl", "train", "tiny", *keys]
    full, cut = tmp_path / "full", tmp_path / "cut"
    _run([*cmd, f"train.out_dir={full}"], tmp_path)
    _run([*cmd, f"train.out_dir={cut}", "train.stop_after=5"], tmp_path)
    _run([*cmd, f"train.out_dir={cut}"], tmp_path)  # resumes from step 5

    for d in (full, cut):
        assert json.loads((d / "summary.json").read_text())["completed"]
        assert (d / "config.yaml").is_file() and (d / "checkpoints").is_dir()
    a, b = _metrics(full), _metrics(cut)
    assert [m["step"] for m in a] == [m["step"] for m in b]  # nothing logged twice
    train = [k for k in a[-2] if k.startswith("train/") and isinstance(a[-2][k], float)]
    for ma, mb in zip(a, b):
        if ma.get("phase") == "rl":
            assert ma["train/loss"] != 0.0
            for k in train:
                assert mb[k] == pytest.approx(ma[k], rel=1e-5, abs=1e-6), (ma["step"], k)
    if device == "cpu":  # the CPU draws are fixed: refills happen (on a GPU they may not)
        assert any(m.get("curriculum/refill_rounds", 0) > 0 for m in a)


def test_fsdp_static_sampler_on_the_whole_copy_samples_what_ddp_samples(tmp_path, tiny_overrides):
    """Under sharded layers the static sampler decodes with a whole copy of the policy,
    refreshed before each rollout: the first RL step samples exactly what plain DDP samples
    (same weights, same per-rank seeds), and the greedy evaluation, sharded over the ranks
    again, scores the same."""
    keys = [
        *tiny_overrides,
        "rollout.backend=static",
        "train.steps=2",
        "curriculum.drop_zero_variance=false",
        "rewards.0.name=length_penalty",  # a reward that varies: non-zero updates
        "rewards.0.args={coef: 0.1, target: 5}",
    ]
    cmd = [*TORCHRUN, "2", "-m", "steerl", "train", "tiny", *keys]
    runs = {}
    for mode in ("auto", "fsdp"):
        out = tmp_path / mode
        _run([*cmd, f"train.distributed={mode}", f"train.out_dir={out}"], tmp_path)
        runs[mode] = _metrics(out)
    rl = {mode: [m for m in ms if m.get("phase") == "rl"] for mode, ms in runs.items()}
    first_ddp, first_fsdp = rl["auto"][0], rl["fsdp"][0]
    assert first_ddp["train/reward_std"] > 0  # a real update follows
    for k in ("train/reward", "train/reward_std", "train/completion_length"):
        assert first_fsdp[k] == first_ddp[k], k
    assert first_fsdp["train/loss"] == pytest.approx(first_ddp["train/loss"], rel=1e-4)
    assert first_fsdp["train/grad_norm"] == pytest.approx(first_ddp["train/grad_norm"], rel=1e-4)
    evals = {mode: [m for m in ms if "eval/tag" in m] for mode, ms in runs.items()}
    assert len(evals["fsdp"]) == len(evals["auto"]) == 2  # after the warm-up and at the end
    for a, b in zip(evals["auto"], evals["fsdp"]):
        assert a.keys() == b.keys()
        for k in a:
            if k.startswith("eval/accuracy"):
                assert b[k] == pytest.approx(a[k], abs=1e-6), k


def test_options_that_do_not_add_up_over_ranks_fail_at_construction():
    cfg = load_config(
        "tiny",
        [
            "rollout.prompts_per_step=3",
            "objectives.balancer=pcgrad",
            "loss.advantage=batch_std",
            "objectives.combine=gdpo",
        ],
    )
    text = "\n".join(ddp.check_config(cfg, 2))
    for key in ("prompts_per_step=3", "balancer=pcgrad", "batch_std", "combine=gdpo"):
        assert key in text
    assert ddp.check_config(cfg, 1) == []
    assert ddp.check_config(load_config("tiny"), 2) == []  # DAPO dynamic sampling included


def test_distributed_off_under_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train.distributed"):
        ddp.init("off", "cpu")
    assert not ddp.is_active()


def test_helpers_are_no_ops_on_one_process():
    assert ddp.world_size() == 1 and ddp.rank() == 0 and ddp.is_main()
    assert ddp.shard([1, 2, 3]) == [1, 2, 3]
    assert ddp.all_sum([1.0, 2.0]) == [1.0, 2.0]
    assert ddp.mean_metrics({"a": 1.0}) == {"a": 1.0}
    assert not ddp.any_rank(False)


def test_fsdp_spike_rollback_restores_the_sharded_weights_and_optimizer(tmp_path):
    """A gradient-norm spike at RL step 3 rolls the sharded run back: right after it the
    gathered weights and optimizer state equal the checkpoint's, the state is sharded again,
    and the run completes."""
    out = tmp_path / "rollback.json"
    _run([*TORCHRUN, "2", str(HERE / "fsdp_rollback_worker.py"), str(out)], tmp_path)
    found = json.loads(out.read_text())
    assert found["action"] == "rollback" and found["sharded"]
    assert found["weights_match"] and found["optimizer_matches"] and found["optimizer_sharded"]
    assert found["completed"]


def test_fsdp_refuses_what_reads_whole_layers():
    cfg = load_config(
        "tiny",
        [
            "train.distributed=fsdp",
            "rollout.backend=static",  # allowed: the sampler reads a whole copy
            "stability.clip=agc",
            "optim.name=adafactor",
        ],
    )
    text = "\n".join(ddp.check_config(cfg, 2))
    for key in ("stability.clip=agc", "optim.name=adafactor"):
        assert key in text
    assert "rollout.backend" not in text
    assert ddp.check_config(load_config("tiny", ["train.distributed=fsdp"]), 2) == []
    assert ddp.check_config(cfg, 1) == []  # one process: nothing is sharded


def test_rollout_weights_copy_the_layers_and_share_the_rest(tiny_model_config):
    """The FSDP rollout copy: decoder layers copied (frozen), embeddings/norm/head the
    policy's own tensors (nothing extra to hold or refresh); refresh brings the layers up to
    date in place (the same tensors, so a captured CUDA graph stays valid)."""
    from steerl import fsdp
    from steerl.models import load_policy

    policy = load_policy(tiny_model_config()).model
    rw = fsdp.RolloutWeights(policy)
    emb, layer = policy.model.embed_tokens.weight, policy.model.layers[0].mlp.up_proj.weight
    copy_layer = rw.model.model.layers[0].mlp.up_proj.weight
    assert rw.model.model.embed_tokens.weight is emb and rw.model.model.norm.weight is (
        policy.model.norm.weight
    )
    assert copy_layer is not layer and not copy_layer.requires_grad
    assert emb.requires_grad and layer.requires_grad and policy.training  # policy untouched
    assert not rw.model.training
    with torch.no_grad():
        layer.add_(1.0)
    assert not torch.equal(copy_layer, layer)
    assert rw.refresh(policy) is rw.model
    assert torch.equal(rw.model.model.layers[0].mlp.up_proj.weight, layer)
    assert rw.model.model.layers[0].mlp.up_proj.weight is copy_layer  # in place
    copied = sum(p.numel() for p in rw.model.parameters() if not p.requires_grad)
    layers = sum(p.numel() for p in policy.model.layers.parameters())
    assert copied == layers


def test_sharded_layers_are_resharded_after_their_forward(tmp_path):
    """The model is FSDP's root (its own parameters ignored, whole): each layer gives back its
    gathered weights after its forward. With the layers alone, each is a root, which FSDP
    keeps gathered until its backward: the whole model at once (a 14B model: 120 GiB/rank)."""
    import torch.distributed as dist
    from test_generation import _qwen

    from steerl import fsdp

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = _qwen()
        head = model.lm_head.weight
        assert fsdp.shard_layers(model) == len(model.model.layers) == 2
        loss = model(input_ids=torch.randint(3, model.config.vocab_size, (2, 8))).logits.sum()
        gathered = [n for n, p in model.model.layers.named_parameters() if not fsdp.is_dtensor(p)]
        assert gathered == []
        loss.backward()
        assert model.lm_head.weight is head and not fsdp.is_dtensor(head)  # stays whole
        assert head.grad is not None
        assert all(fsdp.is_dtensor(p.grad) for p in model.model.layers.parameters())
    finally:
        dist.destroy_process_group()


def test_fsdp_root_is_the_innermost_module_holding_every_layer():
    from test_generation import _qwen

    from steerl import fsdp

    model = _qwen()
    layers = list(model.model.layers)
    assert fsdp._holder(model, layers) is model.model
    stack = torch.nn.ModuleList(layers)  # layers directly in a container: the container
    assert fsdp._holder(stack, layers) is stack
    top = torch.nn.Sequential(*layers)  # directly under a module with a forward: that module
    assert fsdp._holder(top, layers) is top
