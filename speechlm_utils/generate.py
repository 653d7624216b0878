"""Constrained generation over the interleaved stream.

The layout fixes each position's kind, so at every step only that kind's ids can be sampled
(text or TEXT_PAD in a text slot, codebook k's 2048 ids in audio slot k): every output decodes.
Text and audio have their own temperature, top-k and top-p. Generation runs with the KV cache;
Mistral's sliding-window layers keep only the last ``sliding_window`` positions, so a
conversation can go on past the window with bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .tokenizer import TEXT_KIND, TokenLayout


@dataclass
class Sampling:
    """How to pick each token; temperature 0 means greedy (argmax)."""

    text_temperature: float = 0.7
    audio_temperature: float = 0.8
    top_k: int = 250  # 0: no top-k
    top_p: float = 1.0  # 1: no nucleus cut
    audio_repetition_penalty: float = 1.0  # >1 discourages repeating a codebook's last codes
    repetition_window: int = 8  # frames looked back for the penalty
    seed: int | None = None

    @classmethod
    def greedy(cls) -> Sampling:
        return cls(text_temperature=0.0, audio_temperature=0.0)


def kind_bias(layout: TokenLayout, device, dtype=torch.float32) -> torch.Tensor:
    """``[K + 1, padded_vocab]``: 0 where a kind may put an id, -inf elsewhere."""
    masks = torch.from_numpy(layout.kind_masks())
    bias = torch.full(masks.shape, float("-inf"), dtype=dtype)
    bias[masks] = 0.0
    return bias.to(device)


def _pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
          generator: torch.Generator | None) -> torch.Tensor:  # fmt: skip
    """One id from ``logits[V]`` (already masked)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the first that crosses
        logits[order[drop]] = float("-inf")
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[0]


@torch.no_grad()
def stream_tokens(model, layout: TokenLayout, prompt_ids, max_new_tokens: int,
                  sampling: Sampling | None = None, use_cache: bool = True,
                  start_position: int = 0) -> Iterator[int]:  # fmt: skip
    """Yield new ids one by one after ``prompt_ids`` ([N] ids that start at a group boundary,
    offset by ``start_position`` when they continue an earlier stream)."""
    sampling = sampling or Sampling()
    device = next(model.parameters()).device
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    bias = kind_bias(layout, device)
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).reshape(1, -1)
    if ids.shape[1] == 0:
        raise ValueError("generation needs a prompt of at least one token")
    history = ids[0].tolist()
    past = None
    step_input = ids
    position = start_position + ids.shape[1]  # position of the token about to be generated
    for _ in range(max_new_tokens):
        if use_cache:
            out = model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
        else:
            out = model(input_ids=torch.tensor([history], device=device), use_cache=False)
        logits = out.logits[0, -1].float()
        kind = layout.kind_of(position)
        logits = logits[: bias.shape[1]] + bias[kind]
        if kind != TEXT_KIND and sampling.audio_repetition_penalty != 1.0:
            recent = history[-layout.group_len * sampling.repetition_window :]
            lo, hi = layout.id_range(kind)
            seen = torch.tensor([t for t in recent if lo <= t < hi], dtype=torch.long,
                                device=device)  # fmt: skip
            if seen.numel():
                vals = logits[seen]
                logits[seen] = torch.where(vals > 0, vals / sampling.audio_repetition_penalty,
                                           vals * sampling.audio_repetition_penalty)  # fmt: skip
        text = kind == TEXT_KIND
        next_id = int(_pick(logits, sampling.text_temperature if text
                            else sampling.audio_temperature, sampling.top_k, sampling.top_p,
                            generator))  # fmt: skip
        history.append(next_id)
        step_input = torch.tensor([[next_id]], device=device)
        position += 1
        yield next_id


def generate(model, layout: TokenLayout, prompt_ids, max_new_tokens: int,
             sampling: Sampling | None = None, use_cache: bool = True) -> list[int]:  # fmt: skip
    """All new ids at once (see `stream_tokens`)."""
    return list(stream_tokens(model, layout, prompt_ids, max_new_tokens, sampling, use_cache))
