"""Constrained generation over the interleaved stream.

The layout fixes each position's kind, so at every step only that kind's ids can be sampled
(text or TEXT_PAD in a text slot, codebook k's 2048 ids in audio slot k): every output decodes.
Text and audio have their own temperature, top-k and top-p. Generation runs with the KV cache;
Mistral's sliding-window layers keep only the last ``sliding_window`` positions, so a
conversation can go on past the window with bounded memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
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


def _kind_logits(hidden: torch.Tensor, weight: torch.Tensor, layout: TokenLayout,
                 kind: int) -> torch.Tensor:  # fmt: skip
    """Logits ``[padded_vocab]`` computed only on the rows ``kind`` allows (the output layer is
    most of a small model's cost per token); -inf elsewhere."""
    logits = torch.full((layout.padded_vocab_size,), float("-inf"), device=hidden.device)
    lo, hi = layout.id_range(kind)
    logits[lo:hi] = (weight[lo:hi] @ hidden.to(weight.dtype)).float()
    if kind == TEXT_KIND:
        logits[layout.text_pad_id] = (weight[layout.text_pad_id] @ hidden.to(weight.dtype)).float()
    return logits


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
                  start_position: int = 0, stats: dict | None = None) -> Iterator[int]:  # fmt: skip
    """Yield new ids one by one after ``prompt_ids`` ([N] ids that start at a group boundary,
    offset by ``start_position`` when they continue an earlier stream). ``stats`` (optional)
    receives ``cache_len``: the positions the KV cache holds (bounded by the sliding window)."""
    sampling = sampling or Sampling()
    device = next(model.parameters()).device
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    from .model import core_model, output_weight

    decoder, weight = core_model(model), output_weight(model)
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).reshape(1, -1)
    if ids.shape[1] == 0:
        raise ValueError("generation needs a prompt of at least one token")
    history = ids[0].tolist()
    past = None
    step_input = ids
    position = start_position + ids.shape[1]  # position of the token about to be generated
    for _ in range(max_new_tokens):
        if use_cache:
            out = decoder(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            if stats is not None:
                stats["cache_len"] = max(layer.keys.shape[-2] for layer in past.layers)
        else:
            out = decoder(input_ids=torch.tensor([history], device=device), use_cache=False)
        kind = layout.kind_of(position)
        logits = _kind_logits(out.last_hidden_state[0, -1], weight, layout, kind)
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


# -- speech in, speech out --------------------------------------------------------------------


def prompt_from_audio(wav24: np.ndarray, codec, tokenizer, words=None) -> np.ndarray:
    """Token ids of a 24 kHz waveform: padded to whole groups, Mimi-encoded, with ``words``
    (e.g. from Whisper) in the text slots. Starts at a group boundary. ``[N]`` int64."""
    lay = tokenizer.layout
    group = lay.frames_per_group * codec.frame_samples
    padded = max(group, math.ceil(wav24.size / group) * group)
    wav = torch.zeros(1, 1, padded)
    wav[0, 0, : wav24.size] = torch.from_numpy(np.asarray(wav24, dtype=np.float32))
    codes = codec.encode(wav, [padded])[0]
    return tokenizer.encode(codes.numpy(), words or []).ids


@dataclass
class Response:
    """A generated reply: its ids, text channel, codes and audio, and how it went."""

    ids: list[int]
    text: str
    codes: np.ndarray  # [K, F]
    audio: np.ndarray  # [T] float32, 24 kHz
    seconds: float  # wall time
    first_audio_s: float  # wall time until the first group's audio was ready
    stopped: str  # "length" or "silence"

    @property
    def audio_s(self) -> float:
        return self.audio.size / 24_000


def stream_response(model, tokenizer, codec, prompt_ids, max_s: float = 10.0,
                    sampling: Sampling | None = None, stop_silence_s: float | None = 2.0,
                    silence_dbfs: float = -45.0, start_position: int = 0) -> Iterator[dict]:
    """Generate group by group after ``prompt_ids``; yield each finished group as soon as its
    400 ms of audio is decoded (Mimi streaming): ``{"group", "ids", "text", "audio"}``.
    Stops after ``max_s`` or ``stop_silence_s`` of silence."""
    lay = tokenizer.layout
    groups = max(1, int(round(max_s / lay.group_duration_s)))
    tokens = stream_tokens(model, lay, prompt_ids, groups * lay.group_len, sampling,
                           start_position=start_position)  # fmt: skip
    quiet_groups = 0
    with codec.streaming_decoder() as decode:
        for g in range(groups):
            ids = [next(tokens) for _ in range(lay.group_len)]
            text, codes = tokenizer.decode(np.array(ids))
            audio = decode(codes)
            rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
            quiet_groups = quiet_groups + 1 if 20 * math.log10(max(rms, 1e-10)) < silence_dbfs \
                else 0  # fmt: skip
            yield {"group": g, "ids": ids, "text": text, "audio": audio}
            if stop_silence_s and quiet_groups * lay.group_duration_s >= stop_silence_s:
                return


def respond(model, tokenizer, codec, prompt_ids, max_s: float = 10.0,
            sampling: Sampling | None = None, stop_silence_s: float | None = 2.0,
            start_position: int = 0, on_group=None) -> Response:  # fmt: skip
    """Generate a whole reply (see `stream_response`); ``on_group(group)`` sees each group as
    it is ready (e.g. to play it)."""
    start = time.perf_counter()
    first = None
    ids, audio = [], []
    stopped = "length"
    lay = tokenizer.layout
    n_groups = max(1, int(round(max_s / lay.group_duration_s)))
    for group in stream_response(model, tokenizer, codec, prompt_ids, max_s, sampling,
                                 stop_silence_s, start_position=start_position):  # fmt: skip
        if first is None:
            first = time.perf_counter() - start
        ids += group["ids"]
        audio.append(group["audio"])
        if on_group:
            on_group(group)
    if len(ids) < n_groups * lay.group_len:
        stopped = "silence"
    text, codes = tokenizer.decode(np.array(ids))
    return Response(ids, text, codes, np.concatenate(audio) if audio else np.zeros(0, np.float32),
                    time.perf_counter() - start, first or 0.0, stopped)


def continuation_check(model, tokenizer, codec, ids, prompt_s: float = 4.0,
                       continue_s: float = 4.0) -> dict:  # fmt: skip
    """Prompt with the first ``prompt_s`` of a token stream, continue greedily for
    ``continue_s``, and compare with what really follows: the share of identical tokens, the
    generated and true text channels, and the response."""
    lay = tokenizer.layout
    p = int(round(prompt_s / lay.group_duration_s)) * lay.group_len
    n = int(round(continue_s / lay.group_duration_s)) * lay.group_len
    ids = np.asarray(ids)[: p + n]
    response = respond(model, tokenizer, codec, ids[:p], n / lay.tokens_per_s,
                       Sampling.greedy(), stop_silence_s=None)  # fmt: skip
    truth = ids[p:]
    same = np.asarray(response.ids[: truth.size]) == truth
    return {"exact_share": float(same.mean()) if same.size else 0.0,
            "text": response.text, "true_text": tokenizer.decode(truth)[0],
            "response": response}  # fmt: skip


GPU_MEMORY_TB_S = {"A100 80GB": 2.0, "H100 80GB SXM": 3.35}  # HBM bandwidth


def realtime_plan(params: float = 7.31e9, bytes_per_param: int = 2,
                  efficiency: float = 0.6) -> list[dict]:  # fmt: skip
    """Batch-1 decoding is memory-bound: each token reads every weight once. Tokens/s for a
    Mistral-7B-sized model in bf16 at ``efficiency`` of each GPU's bandwidth, against the
    55 tokens/s real time needs."""
    rows = []
    for gpu, tb_s in GPU_MEMORY_TB_S.items():
        tokens_s = tb_s * 1e12 * efficiency / (params * bytes_per_param)
        rows.append({"gpu": gpu, "tokens_per_s": round(tokens_s),
                     "realtime_factor": round(tokens_s / 55.0, 1)})  # fmt: skip
    return rows
