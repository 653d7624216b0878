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
"""

from __future__ import annotations

import torch

from .checkpoints import load_lm
from .config import ModelsConfig
from .tokenizer import TokenLayout

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NEW_ROW_NOISE = 0.1  # new rows' noise, relative to the text rows' per-dimension std


@torch.no_grad()
def extend_vocabulary(model, layout: TokenLayout, seed: int = 0) -> None:
    """Grow the input and output tables to ``layout.padded_vocab_size`` rows (see module doc)."""
    old = model.get_input_embeddings().weight.shape[0]
    if old != layout.text_vocab_size:
        raise ValueError(f"the model has {old} embedding rows but the text tokenizer has "
                         f"{layout.text_vocab_size}: they must come from the same base model")
    model.resize_token_embeddings(layout.padded_vocab_size, mean_resizing=False)
    gen = torch.Generator().manual_seed(seed)
    tables = [model.get_input_embeddings().weight]
    if model.get_output_embeddings() is not None and not model.config.tie_word_embeddings:
        tables.append(model.get_output_embeddings().weight)
    for table in tables:
        text = table[:old].float()
        mean, std = text.mean(0), text.std(0)
        new = table.shape[0] - old
        noise = torch.randn(new, table.shape[1], generator=gen) * std * NEW_ROW_NOISE
        table[old:] = (mean + noise).to(table.dtype)


def prune_layers(model, keep_every: int | None = None,
                 keep_layers: list[int] | None = None) -> list[int]:  # fmt: skip
    """Keep every ``keep_every``-th decoder layer (0, n, 2n, ...) or exactly ``keep_layers``;
    renumbers them so the KV cache and sliding-window pattern stay right. Returns the kept
    original indices."""
    layers = model.model.layers
    n = len(layers)
    kept = list(keep_layers) if keep_layers is not None else list(range(0, n, keep_every or 1))
    if not kept or any(not 0 <= i < n for i in kept) or sorted(set(kept)) != kept:
        raise ValueError(f"layers to keep must be increasing indices in [0, {n}), got {kept}")
    model.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new_index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_index
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
    return kept


def add_lora(model, layout: TokenLayout, r: int = 64, alpha: int | None = None,
             dropout: float = 0.0):  # fmt: skip
    """Wrap ``model`` with LoRA adapters plus trainable new-token rows (see module doc)."""
    from peft import LoraConfig, get_peft_model

    new_ids = list(range(layout.text_vocab_size, layout.vocab_size))  # padding rows stay idle
    config = LoraConfig(
        r=r, lora_alpha=alpha or r, lora_dropout=dropout, target_modules=list(LORA_TARGETS),
        trainable_token_indices={"embed_tokens": new_ids, "lm_head": new_ids},
        task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, config)


def build_speech_lm(models: ModelsConfig, layout: TokenLayout, lora_r: int | None = None,
                    keep_every: int | None = None, keep_layers: list[int] | None = None,
                    device: str = "cpu", seed: int = 0):  # fmt: skip
    """Base model -> pruned (optional) -> vocabulary extended -> LoRA (optional), in fp32 on
    ``device`` (the trainer casts frozen weights to bf16 on GPUs)."""
    model = load_lm(models, device="cpu", dtype=torch.float32)
    if keep_every or keep_layers:
        prune_layers(model, keep_every, keep_layers)
    extend_vocabulary(model, layout, seed)
    if lora_r:
        model = add_lora(model, layout, lora_r)
    return model.to(device)


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


def count_parameters(model) -> dict:
    """Trainable and total parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
