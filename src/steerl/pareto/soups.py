r"""Rewarded soups: interpolate the weights of models fine-tuned from one base model.

Ramé et al. 2023, "Rewarded soups: towards Pareto-optimal alignment by interpolating weights
fine-tuned on diverse rewards" (arXiv:2306.04488): fine-tune one copy of a pre-trained model
per reward, then theta(lambda) = sum_i lambda_i theta_i for lambda on the simplex traces an
approximate Pareto front at the cost of evaluations only. This only works when every theta_i
comes from the *same* initialisation (linear mode connectivity), so ``check_same_base``
refuses checkpoints whose keys, shapes, dtypes or architecture (``config.json``) differ.
Same keys and shapes is necessary, not sufficient: two unrelated models of one architecture
pass the check, and their soup is meaningless.

A checkpoint is a ``.safetensors`` file or a folder holding ``model.safetensors`` (or the
shards of ``model.safetensors.index.json``) and, usually, ``config.json``, e.g. steerl's
``runs/<name>/checkpoints/step_<N>/``.

Floating-point tensors are interpolated in float32 and cast back to their dtype; other
tensors (integer buffers) must be identical in every checkpoint and are copied.

LoRA (``model.lora.enabled``): a checkpoint folder holding ``adapter_model.safetensors`` and
``adapter_config.json`` (``peft``'s format, as steerl's LoRA checkpoints are) is an adapter.
Adapters are souped the same way, tensor by tensor: ``A(lambda) = sum_i lambda_i A_i`` and
``B(lambda) = sum_i lambda_i B_i`` separately, as Ramé et al. do for their LoRA fine-tunes.
This is *not* the interpolation of the weight updates: ``B(lambda) A(lambda)`` differs from
``sum_i lambda_i B_i A_i`` by cross terms ``lambda_i lambda_j B_i A_j``; only the endpoints
(one lambda_i = 1) reproduce a fine-tune exactly. Adapters must share the base model and the
LoRA configuration (``adapter_config.json``: rank, alpha, target modules, ...); full weights
and adapters cannot be mixed in one soup.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

#: config.json keys that may differ between fine-tunes of one base model.
IGNORED_CONFIG_KEYS = frozenset(
    {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "_commit_hash"}
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")  # peft's LoRA adapter
#: adapter_config.json keys that may differ between adapters of one base and LoRA setup.
IGNORED_ADAPTER_KEYS = frozenset({"peft_version", "inference_mode", "revision"})


class SoupError(ValueError):
    """The checkpoints cannot be souped (different base models, bad weights); the message
    names the checkpoints and what differs."""


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """``(state_dict, config or None)`` of a ``.safetensors`` file or a model folder; for a
    LoRA adapter folder, the adapter's tensors and its ``adapter_config.json`` (see
    :func:`is_adapter`)."""
    from safetensors.torch import load_file

    p = Path(path)
    if is_adapter(p):
        return load_file(str(p / ADAPTER_FILES[0])), _adapter_config(p / ADAPTER_FILES[1])
    if p.is_file():
        cfg_path = p.parent / "config.json"
        return load_file(str(p)), _read_config(cfg_path)
    if not p.is_dir():
        raise SoupError(f"checkpoint {str(p)!r} does not exist")
    single, index = p / WEIGHT_FILES[0], p / WEIGHT_FILES[1]
    if single.is_file():
        sd = load_file(str(single))
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd = {}
        for shard in shards:
            sd.update(load_file(str(p / shard)))
    else:
        raise SoupError(
            f"checkpoint folder {str(p)!r} has no {WEIGHT_FILES[0]} or {WEIGHT_FILES[1]}"
        )
    return sd, _read_config(p / "config.json")


def _read_config(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def is_adapter(path: str | Path) -> bool:
    """True for a folder holding a ``peft`` adapter (``adapter_model.safetensors``)."""
    return (Path(path) / ADAPTER_FILES[0]).is_file()


def _adapter_config(path: Path) -> dict:
    """``adapter_config.json`` with ``peft_adapter: true`` added (so an adapter never passes
    for full weights) and list values sorted (peft writes ``target_modules`` from a set)."""
    if not path.is_file():
        raise SoupError(f"adapter folder {str(path.parent)!r} has no {ADAPTER_FILES[1]}")
    cfg = {k: v for k, v in json.loads(path.read_text()).items() if k not in IGNORED_ADAPTER_KEYS}
    cfg = {k: sorted(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return {**cfg, "peft_adapter": True}


def check_kinds(paths: Sequence[str | Path]) -> bool:
    """True when every checkpoint is a LoRA adapter, False when none is; a mix is a
    ``SoupError`` naming both kinds."""
    kinds = [is_adapter(p) for p in paths]
    if any(kinds) and not all(kinds):
        ad = [str(p) for p, k in zip(paths, kinds) if k]
        full = [str(p) for p, k in zip(paths, kinds) if not k]
        raise SoupError(
            f"cannot soup LoRA adapters ({', '.join(ad)}) with full weights "
            f"({', '.join(full)}): soup runs fine-tuned the same way (all with model.lora or "
            "all without)"
        )
    return all(kinds)


def check_same_base(
    state_dicts: Sequence[dict[str, torch.Tensor]],
    configs: Sequence[dict | None] | None = None,
    names: Sequence[str] | None = None,
) -> None:
    """Raise ``SoupError`` unless all checkpoints have the same keys, shapes, dtypes and
    architecture config (``config.json`` minus ``IGNORED_CONFIG_KEYS``)."""
    if len(state_dicts) < 1:
        raise SoupError("a soup needs at least one checkpoint")
    names = list(names or [f"checkpoint {i}" for i in range(len(state_dicts))])
    ref, ref_name = state_dicts[0], names[0]
    for sd, name in zip(state_dicts[1:], names[1:]):
        missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
        if missing or extra:
            raise SoupError(
                f"{name} does not come from the same base model as {ref_name}: "
                f"keys only in {ref_name}: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                f"keys only in {name}: {extra[:5]}{' ...' if len(extra) > 5 else ''}"
            )
        for k in ref:
            a, b = ref[k], sd[k]
            if a.shape != b.shape or a.dtype != b.dtype:
                raise SoupError(
                    f"{name} does not come from the same base model as {ref_name}: tensor "
                    f"{k!r} is {tuple(b.shape)} {b.dtype} there and {tuple(a.shape)} {a.dtype} "
                    f"in {ref_name}"
                )
    if configs is None:
        return
    known = [(c, n) for c, n in zip(configs, names) if c is not None]
    if known and len(known) != len(configs):
        without = [n for c, n in zip(configs, names) if c is None]
        raise SoupError(f"config.json is missing for {', '.join(without)} but not for the others")
    for cfg, name in known[1:]:
        base, base_name = known[0]
        keys = (set(base) | set(cfg)) - IGNORED_CONFIG_KEYS
        diff = sorted(k for k in keys if base.get(k) != cfg.get(k))
        if diff:
            shown = "; ".join(f"{k}: {base.get(k)!r} vs {cfg.get(k)!r}" for k in diff[:5])
            raise SoupError(
                f"{name} does not come from the same base model as {base_name}: config.json "
                f"differs in {shown}"
            )


def interpolate(
    state_dicts: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * state_dicts[i]`` (weights >= 0 summing to 1; see module doc)."""
    w = [float(x) for x in weights]
    if len(w) != len(state_dicts):
        raise SoupError(f"{len(w)} weights for {len(state_dicts)} checkpoints")
    if any(x < 0 for x in w) or abs(sum(w) - 1.0) > 1e-6:
        raise SoupError(f"soup weights must be >= 0 and sum to 1 (a preference), got {w}")
    check_same_base(state_dicts)
    out = {}
    for k, ref in state_dicts[0].items():
        if ref.is_floating_point():
            acc = torch.zeros(ref.shape, dtype=torch.float32)
            for sd, wi in zip(state_dicts, w):
                if wi:
                    acc += wi * sd[k].to(torch.float32)
            out[k] = acc.to(ref.dtype)
        else:
            for sd in state_dicts[1:]:
                if not torch.equal(sd[k], ref):
                    raise SoupError(f"non-float tensor {k!r} differs between checkpoints")
            out[k] = ref.clone()
    return out


def soup(
    paths: Sequence[str | Path], weights: Sequence[float], out_dir: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Load, check and interpolate checkpoints; with ``out_dir`` also write a loadable model
    folder there (``model.safetensors`` + the other files of the first checkpoint folder,
    such as ``config.json`` and the tokenizer). Returns the souped state dict."""
    from safetensors.torch import save_file

    adapters = check_kinds(paths)
    loaded = [load_checkpoint(p) for p in paths]
    names = [str(p) for p in paths]
    check_same_base([sd for sd, _ in loaded], [c for _, c in loaded], names)
    sd = interpolate([sd for sd, _ in loaded], weights)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        first = Path(paths[0])
        src = first if first.is_dir() else first.parent
        skip = {*WEIGHT_FILES, ADAPTER_FILES[0], "optimizer.pt", "rng.safetensors"}
        skip.add("trainer_state.json")
        for f in src.iterdir():
            if f.is_file() and f.name not in skip and not f.name.startswith("model-"):
                shutil.copy2(f, out / f.name)  # adapter_config.json for an adapter
        meta = {"soup_of": json.dumps(names), "soup_weights": json.dumps(list(weights))}
        target = ADAPTER_FILES[0] if adapters else WEIGHT_FILES[0]
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out / target), meta)
    return sd
