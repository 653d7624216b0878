"""The speech LM: Mistral with its vocabulary extended by the audio tokens, made to fit one GPU.

- **Vocabulary**: the embedding and output tables grow to the token layout's
  ``padded_vocab_size``. New rows start at the mean of the text rows plus small noise (std 0.1
  of the text rows' per-dimension std), each codebook block with its own noise, so the new
  tokens start "average" (logits near the text mean, no outlier norm) but distinguishable.
- **Layer pruning** (``keep_every=n`` or ``keep_layers=[...]``): keep a subset of the decoder
  layers (the original dropped every other one). Cheap and fast; loses some of the base's
  knowledge.
- **LoRA** (peft) on every attention and MLP projection. The new audio rows must learn from
  scratch, so they are trained too, with peft's ``trainable_token_indices`` on both
  ``embed_tokens`` and ``lm_head``: only the 8 193 new rows of each table get gradients and
  optimizer state (2 x 8 193 x 4096 = 67 M parameters for 7B), where ``modules_to_save``
  would train and store full copies of both tables (330 M, plus their Adam state).
- **Lean loading**: the base loads straight into its compute dtype on its device (bf16 on
  Ampere and later, fp16 on older GPUs, fp32 on CPUs; `config.pick_dtype`); only what trains
  is upcast to fp32 (LoRA and the new rows, or every weight in a full finetune). 7B never
  exists in fp32 in host memory. For chat, `merge_trained` folds LoRA and the trained rows
  into the weights once, so generation runs a plain model.
"""

from __future__ import annotations

import warnings

import torch

from .checkpoints import load_lm
from .config import ModelsConfig, pick_dtype
from .tokenizer import TokenLayout

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NEW_ROW_NOISE = 0.1  # new rows' noise, relative to the text rows' per-dimension std
LORA_ALPHA_PER_RANK = 1  # lora_alpha = r: the update B @ A is applied at scale alpha / r = 1
PEFT_PREFIX = "base_model.model."  # how peft names the wrapped model's parameters


@torch.no_grad()
def extend_vocabulary(model, layout: TokenLayout, seed: int = 0) -> None:
    """Grow the input and output tables to ``layout.padded_vocab_size`` rows (see module doc)."""
    old, have = layout.text_vocab_size, model.get_input_embeddings().weight.shape[0]
    if have == old:
        model.resize_token_embeddings(layout.padded_vocab_size, mean_resizing=False)
    elif have != layout.padded_vocab_size:  # already sized by load_lm(vocab_rows=...)
        raise ValueError(f"the model has {have} embedding rows but the text tokenizer has "
                         f"{old}: they must come from the same base model")
    gen = torch.Generator().manual_seed(seed)
    tables = [model.get_input_embeddings().weight]
    if model.get_output_embeddings() is not None and not model.config.tie_word_embeddings:
        tables.append(model.get_output_embeddings().weight)
    for table in tables:
        mean, std = _row_stats(table[:old])
        new = table.shape[0] - old
        rows = torch.randn(new, table.shape[1], generator=gen)  # in place from here on:
        rows.mul_(std.cpu() * NEW_ROW_NOISE).add_(mean.cpu())  # no full-size temporaries
        table[old:].copy_(rows)


def _row_stats(rows: torch.Tensor, block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of ``rows`` [N, H] in fp64, a block at a time (no full-size
    fp32 copy of a bf16 table)."""
    total = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
    squares = torch.zeros_like(total)
    for start in range(0, rows.shape[0], block):
        part = rows[start:start + block].double()
        total += part.sum(0)
        squares += (part * part).sum(0)
    n = rows.shape[0]
    mean = total / n
    var = (squares - n * mean * mean) / max(n - 1, 1)
    return mean.float(), var.clamp_min(0).sqrt().float()


def kept_layers(n: int, keep_every: int | None = None,
                keep_layers: list[int] | None = None) -> list[int]:  # fmt: skip
    """The original indices of the decoder layers kept out of ``n``: every ``keep_every``-th
    (0, k, 2k, ...) or exactly ``keep_layers`` (`build_speech_lm` loads only those, renumbered
    0..k-1 so the KV cache and sliding-window pattern stay right)."""
    kept = list(keep_layers) if keep_layers is not None else list(range(0, n, keep_every or 1))
    if not kept or any(not 0 <= i < n for i in kept) or sorted(set(kept)) != kept:
        raise ValueError(f"layers to keep must be increasing indices in [0, {n}), got {kept}")
    return kept


def add_lora(model, layout: TokenLayout, r: int = 64, alpha: int | None = None,
             dropout: float = 0.0):  # fmt: skip
    """Wrap ``model`` with LoRA adapters plus trainable new-token rows (see module doc)."""
    from peft import LoraConfig, get_peft_model

    new_ids = list(range(layout.text_vocab_size, layout.vocab_size))  # padding rows stay idle
    config = LoraConfig(
        r=r, lora_alpha=alpha or r * LORA_ALPHA_PER_RANK, lora_dropout=dropout,
        target_modules=list(LORA_TARGETS),
        trainable_token_indices={"embed_tokens": new_ids, "lm_head": new_ids},
        task_type="CAUSAL_LM",
    )  # fmt: skip
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; not ours
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated",
                                FutureWarning)  # fmt: skip
        return get_peft_model(model, config)


def build_speech_lm(models: ModelsConfig, layout: TokenLayout, lora_r: int | None = None,
                    keep_every: int | None = None, keep_layers: list[int] | None = None,
                    device: str = "cpu", seed: int = 0, dtype: torch.dtype | None = None,
                    attention_window: int | None = None, upcast: bool = True):  # fmt: skip
    """Base model -> pruned (optional) -> vocabulary extended -> LoRA (optional), loaded
    straight into ``dtype`` (default: `config.pick_dtype(device)`) on ``device``; what trains
    is then upcast to fp32 (`upcast_trainable`) unless ``upcast`` is False (inference)."""
    from .checkpoints import lm_config

    dtype = dtype or pick_dtype(device)
    config = lm_config(models)
    if config.vocab_size != layout.text_vocab_size:
        raise ValueError(f"{models.lm} has {config.vocab_size} embedding rows but the text "
                         f"tokenizer has {layout.text_vocab_size}: they must come from the same "
                         "base model")  # fmt: skip
    kept = kept_layers(config.num_hidden_layers, keep_every, keep_layers) if \
        (keep_every or keep_layers) else None  # fmt: skip
    model = load_lm(models, device=device, dtype=dtype, attention_window=attention_window,
                    vocab_rows=layout.padded_vocab_size, keep_layers=kept,
                    config=config)  # fmt: skip
    extend_vocabulary(model, layout, seed)
    if lora_r:
        model = add_lora(model, layout, lora_r)
    if upcast:
        upcast_trainable(model)
    return model


def upcast_trainable(model) -> None:
    """fp32 master weights for what trains (LoRA, new rows, or everything without LoRA); the
    frozen rest stays in the load dtype."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


@torch.no_grad()
def merge_trained(model, trained: dict, layout: TokenLayout) -> None:
    """Fold a run's trained weights (`train._trainable_state`: peft's names for LoRA and the
    new rows, plain names for a full finetune) into a plain model built without adapters, in
    place: ``W += B @ A`` per LoRA pair (computed in fp32, scale alpha / r = 1), the trained
    new rows written into both tables, other weights copied. The same result as peft's
    ``merge_and_unload``, without building the adapters (less memory, no peft at chat time)."""
    params = dict(model.named_parameters())
    new_ids = torch.arange(layout.text_vocab_size, layout.vocab_size)
    for name, value in trained.items():
        plain = name.removeprefix(PEFT_PREFIX)
        if ".lora_B." in plain:
            continue  # applied with its lora_A
        if ".lora_A." in plain:
            module = plain.split(".lora_A.")[0]
            b = trained[name.replace(".lora_A.", ".lora_B.")]
            weight = params[module + ".weight"]
            a = value.to(weight.device, torch.float32)
            b = b.to(weight.device, torch.float32)
            for start in range(0, weight.shape[0], 256):  # small blocks: small temporaries
                rows = weight[start:start + 256]
                rows.copy_(rows.float().addmm_(b[start:start + 256], a,
                                               alpha=LORA_ALPHA_PER_RANK))  # fmt: skip
        elif ".token_adapter.trainable_tokens_delta." in plain:  # the new rows' values
            weight = params[plain.split(".token_adapter.")[0] + ".weight"]
            weight[new_ids.to(weight.device)] = value.to(weight.device, weight.dtype)
        elif plain in params:
            params[plain].copy_(value)
        else:
            raise KeyError(f"trained weight {name!r} matches nothing in the model: was the run "
                           "trained with another layer selection or LoRA setting?")  # fmt: skip


def for_inference(model):
    """``model`` frozen, in eval mode, with the KV cache on: ready for generation."""
    model.requires_grad_(False)
    model.config.use_cache = True
    return model.eval()


def output_weight(lm) -> torch.Tensor:
    """The LM head's effective ``[V, H]`` weight (with peft's trained new rows merged in)."""
    head = lm.get_output_embeddings()
    adapter = getattr(head, "token_adapter", None)
    if adapter is not None and not adapter.disable_adapters and adapter.active_adapters:
        return adapter.get_merged_weights(adapter.active_adapters)
    return head.weight


def core_model(lm):
    """The decoder stack (``MistralModel``) of a plain or peft-wrapped model."""
    inner = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return inner.model


def trainable_groups(model) -> list[dict]:
    """What trains, grouped: LoRA's A and B per projection, the new rows of each table (peft's
    trainable tokens), or whole weights by name; tensors and parameters per group."""
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        if "lora_A" in parts or "lora_B" in parts:
            proj = parts[parts.index("lora_A" if "lora_A" in parts else "lora_B") - 1]
            key = f"LoRA A, B on {proj}"
        elif "token_adapter" in parts:
            table = "output" if "lm_head" in parts else "embedding"
            key = f"new rows of the {table} table"
        else:
            key = ".".join(x for x in parts if not x.isdigit()).removeprefix("model.")
        group = groups.setdefault(key, {"group": key, "tensors": 0, "parameters": 0})
        group["tensors"] += 1
        group["parameters"] += p.numel()
    return list(groups.values())


def count_parameters(model) -> dict:
    """Trainable and total parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
