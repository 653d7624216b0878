"""Constrained generation over the interleaved stream.

The layout fixes each position's kind, so at every step only that kind's ids can be sampled
(text or TEXT_PAD in a text slot, codebook k's 2048 ids in audio slot k): every output decodes.
Text and audio have their own temperature and top-k (Moshi's defaults: 0.7 and 25 for text,
0.8 and 250 for audio), and share a top-p. Generation runs with the KV cache;
Mistral's sliding-window layers keep only the last ``sliding_window`` positions, so a
conversation can go on past the window with bounded memory. An LM without a window of its own
(Mistral-7B-v0.3) is given one at load (`checkpoints.load_lm`'s ``attention_window``).

The reply boundary: text runs ``text_lead_s`` ahead of its sound, so the empty text slots of a
prompt's last ``text_lead_s`` belong to words said after it. Before its first sound the model
writes them itself over the prompt's fixed audio, so its first words are planned in time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .tokenizer import TEXT_KIND, TokenLayout


@dataclass
class Sampling:
    """How to pick each token; temperature 0 means greedy (argmax). Text picks one of 32k word
    pieces, audio one of a codebook's 2048 codes, so each has its own temperature and top-k."""

    text_temperature: float = 0.7
    audio_temperature: float = 0.8
    text_top_k: int = 25  # 0: no top-k
    audio_top_k: int = 250
    top_p: float = 1.0  # 1: no nucleus cut
    audio_repetition_penalty: float = 1.0  # >1 discourages repeating a codebook's last codes
    repetition_window: int = 8  # frames looked back for the penalty
    seed: int | None = None

    @classmethod
    def greedy(cls) -> Sampling:
        return cls(text_temperature=0.0, audio_temperature=0.0)

    @classmethod
    def from_config(cls, cfg, temperature: float | None = None,
                    seed: int | None = None) -> Sampling:  # fmt: skip
        """A `config.ChatConfig`'s settings; ``temperature``, when given, for text and audio."""
        text_t, audio_t = (cfg.text_temperature, cfg.audio_temperature) if temperature is None \
            else (temperature, temperature)  # fmt: skip
        return cls(text_t, audio_t, cfg.text_top_k, cfg.audio_top_k, seed=seed)


def _kind_logits(hidden: torch.Tensor, weight: torch.Tensor, layout: TokenLayout,
                 kind: int) -> tuple[torch.Tensor, int]:  # fmt: skip
    """The logits of only the rows ``kind`` allows (the output layer is most of a small model's
    cost per token, and sampling over 2048 codes costs less than over the whole vocabulary):
    ``[n]`` float and the id of row 0. A text slot's last row is TEXT_PAD's."""
    lo, hi = layout.id_range(kind)
    hidden = hidden.to(weight.dtype)
    logits = weight[lo:hi] @ hidden
    if kind == TEXT_KIND:  # the pad's logit joins the small result, not its row the big table
        logits = torch.cat([logits, weight[layout.text_pad_id : layout.text_pad_id + 1] @ hidden])
    return logits.float(), lo


def _id_of(index: int, first_id: int, size: int, layout: TokenLayout, kind: int) -> int:
    """The token id of row ``index`` of `_kind_logits`' ``size`` rows."""
    if kind == TEXT_KIND and index == size - 1:
        return layout.text_pad_id
    return first_id + index


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


def sample_next(hidden: torch.Tensor, weight: torch.Tensor, layout: TokenLayout, kind: int,
                history: list[int], sampling: Sampling,
                generator: torch.Generator | None = None) -> int:  # fmt: skip
    """One step's choice: from the last position's ``hidden[H]``, the logits of only the rows
    its ``kind`` allows (the layout fixes it), a repetition penalty for audio, then one id
    drawn with that kind's temperature (0: argmax) and top-k, and the top-p."""
    logits, first_id = _kind_logits(hidden, weight, layout, kind)
    if kind != TEXT_KIND and sampling.audio_repetition_penalty != 1.0:
        _penalize_repeats(logits, history, layout, kind, sampling)
    text = kind == TEXT_KIND
    temperature = sampling.text_temperature if text else sampling.audio_temperature
    top_k = sampling.text_top_k if text else sampling.audio_top_k
    index = int(_pick(logits, temperature, top_k, sampling.top_p, generator))
    return _id_of(index, first_id, logits.numel(), layout, kind)


def _describe_kind(kind: int) -> str:
    if kind == TEXT_KIND:
        return "text slot (a word piece or TEXT_PAD)"
    return f"codebook {kind - 1}" + (" (semantic)" if kind == 1 else " (acoustic)")


def _describe_id(tokenizer, token: int) -> str:
    lay = tokenizer.layout
    if token == lay.text_pad_id:
        return "TEXT_PAD (no new word)"
    if token < lay.text_vocab_size:
        return f"word piece {tokenizer.sp.id_to_piece(int(token))!r}"
    k, code = divmod(token - lay.audio_offset, lay.codebook_size)
    return f"codebook {k} code {code}"


@torch.no_grad()
def explain_step(model, tokenizer, prompt_ids, top: int = 5,
                 sampling: Sampling | None = None) -> dict:  # fmt: skip
    """One step of generation after ``prompt_ids``, laid open: the next position's kind, its
    ``top`` candidates with their probabilities (over the allowed rows only) and what each
    id means, and the id `sample_next` picks."""
    from .model import output_weight

    lay = tokenizer.layout
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
    device = next(model.parameters()).device
    hidden = core_model_output(model, prompt)
    kind = lay.kind_of(prompt.numel())
    weight = output_weight(model)
    logits, first_id = _kind_logits(hidden, weight, lay, kind)
    probs = logits.softmax(-1)
    best = torch.topk(probs, min(top, probs.numel()))
    sampling = sampling or Sampling.greedy()
    generator = torch.Generator(device=device).manual_seed(sampling.seed or 0)
    picked = sample_next(hidden, weight, lay, kind, prompt.tolist(), sampling, generator)
    candidates = []
    for p, i in zip(best.values.tolist(), best.indices.tolist()):
        token = _id_of(i, first_id, logits.numel(), lay, kind)
        candidates.append({"id": token, "means": _describe_id(tokenizer, token),
                           "probability": round(p, 4)})  # fmt: skip
    return {"position": prompt.numel(), "kind": _describe_kind(kind),
            "allowed_rows": logits.numel(), "candidates": candidates, "picked": picked,
            "picked_means": _describe_id(tokenizer, picked)}  # fmt: skip


def open_text_slots(layout: TokenLayout, prompt_ids, open_text_from: int | None,
                    start_position: int = 0) -> np.ndarray:  # fmt: skip
    """``[N]`` bool: the prompt positions the model writes itself, the text slots at or after
    ``open_text_from`` that hold TEXT_PAD (a real word token there stays). Position 0 never
    opens: nothing comes before it to predict it from."""
    ids = np.asarray(prompt_ids).reshape(-1)
    opened = (layout.kinds(ids.size, start_position) == TEXT_KIND) & (ids == layout.text_pad_id)
    opened[: ids.size if open_text_from is None else max(1, open_text_from)] = False
    return opened


def _penalize_repeats(logits: torch.Tensor, history: list[int], layout: TokenLayout, kind: int,
                      sampling: Sampling) -> None:  # fmt: skip
    """Damp, in place, the codes of codebook ``kind`` (``logits``: its 2048 rows) seen in the
    last ``repetition_window`` frames' groups."""
    recent = history[-layout.group_len * sampling.repetition_window :]
    lo, hi = layout.id_range(kind)
    seen = torch.tensor([t - lo for t in recent if lo <= t < hi], dtype=torch.long,
                        device=logits.device)  # fmt: skip
    if seen.numel():
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / sampling.audio_repetition_penalty,
                                   vals * sampling.audio_repetition_penalty)  # fmt: skip


DECODES = ("eager", "static", "compiled")  # see `stream_tokens`


def pick_decode(decode: str, device) -> str:
    """``"auto"``: ``"compiled"`` on a CUDA GPU (CUDA graphs take the per-token launch cost
    away; the compilation is paid once), ``"eager"`` elsewhere (on a CPU the ring decoder is
    no faster, measured, and compiling takes longer than a short chat gains). Any other value
    is kept."""
    if decode == "auto":
        return "compiled" if torch.device(device).type == "cuda" else "eager"
    if decode not in DECODES:
        raise ValueError(f"decode={decode!r}: choose auto or one of {', '.join(DECODES)}")
    return decode


FAST_MODEL_TYPES = ("mistral", "llama")  # decoder layers `FastDecoder` knows how to run
PREFILL_CHUNK = 512  # tokens per pass of a prompt: bounds the attention scores' memory
# a compiled stream runs passes of up to this many tokens compiled too, one graph per length:
# the duplex layout's forced user codes ride with a sampled token in a short pass every frame
SHORT_RUN = 8


class FastDecoder:
    """Mistral's decoder stack rewritten for decoding one stream, fed through the model's own
    modules (norms, projections, rotary embedding, MLPs), so the weights are the model's.

    The KV cache is a ring of ``window`` slots per layer, ``[1, kv_heads, window, head_dim]``,
    allocated once: position p lives in slot ``p % window``. One token's step writes its key and
    value into its slot (evicting position p - window, which the window no longer sees) and
    attends over the whole ring with a mask of the positions in (p - window, p]. Keys carry
    their rotary phase, so the slots' order does not matter. Nothing is copied or grown per
    token and every shape is fixed, which is what `torch.compile` (and CUDA graphs, its
    ``reduce-overhead`` mode) need. Prompts and runs of fixed ids go through in passes of at
    most `PREFILL_CHUNK` tokens, attending over the ring and themselves.

    Attention groups each KV head's query heads into one sequence (no ``enable_gqa``), so that
    with a mask a GPU can still use its memory-efficient kernel rather than the fp32 math one.
    ``compiled`` streams use the one-token step under `torch.compile` (compiled once, on first
    use), and passes of up to `SHORT_RUN` tokens (compiled once per length). In fp32 equal to
    transformers' forward token for token (tested with greedy decoding past the window); in
    bf16 equal up to rounding, so a near tie can go the other way. One
    stream at a time: `begin` starts one and a stream that was overtaken is refused. Get one
    with `fast_decoder`.
    """

    def __init__(self, model, window: int | None = None):
        from .model import core_model

        self.decoder = decoder = core_model(model)
        config = decoder.config
        if getattr(config, "model_type", None) not in FAST_MODEL_TYPES:
            raise TypeError(f"decode='static'/'compiled' runs {', '.join(FAST_MODEL_TYPES)} "
                            f"decoders, not {getattr(config, 'model_type', type(decoder))}: use "
                            "decode='eager'")  # fmt: skip
        window = window or getattr(config, "sliding_window", None)
        if not window:
            raise ValueError("this LM has no sliding window, so its cache would grow without "
                             "bound: load it with an attention window (`load_run(..., "
                             "attention_window=4096)`, `ChatConfig.attention_window`, "
                             "`--attention-window`) or use decode='eager'")  # fmt: skip
        self.window = int(window)
        layer = decoder.layers[0]
        param = next(decoder.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.head_dim = layer.self_attn.head_dim
        self.groups = config.num_attention_heads // config.num_key_value_heads
        shape = (1, config.num_key_value_heads, self.window, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                     for _ in decoder.layers]  # fmt: skip
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.slot_position = torch.full((self.window,), -1, dtype=torch.long, device=self.device)
        for buffer in (*self.keys, *self.values, self.slot_position):
            torch._dynamo.mark_static_address(buffer)
        self.length = 0  # positions fed so far
        self.stream = 0  # which stream the ring holds (`begin`)
        # `_step` compiled as a plain function taking the decoder as its first argument: a
        # compiled bound method would hold the decoder in a reference cycle, keeping the model's
        # weights alive after the model is dropped until Python's garbage collector runs
        self.compiled_step = None  # made on the first compiled stream; False: compiling failed
        self.compiled_run = None  # the same for short passes (`SHORT_RUN`)
        self.compiled = False  # whether this stream uses them

    def begin(self, compiled: bool = False) -> int:
        """Start a new stream (the ring's memory is kept); its token for `feed`."""
        self.slot_position.fill_(-1)
        self.length = 0
        self.stream += 1
        if compiled and self.compiled_step is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs
            self.compiled_step = torch.compile(FastDecoder._step, mode=mode, fullgraph=True,
                                               dynamic=False)  # fmt: skip
            self.compiled_run = torch.compile(FastDecoder._chunk, mode=mode, fullgraph=True,
                                              dynamic=False)  # fmt: skip
        self.compiled = bool(compiled and self.compiled_step)
        return self.stream

    @property
    def cache_len(self) -> int:
        """Positions the ring holds now."""
        return min(self.length, self.window)

    @torch.no_grad()
    def feed(self, ids, stream: int | None = None) -> torch.Tensor:
        """Append ``ids`` to the stream; the final norm's output at the last one, ``[H]``.
        ``stream``: the token `begin` gave; refused once another stream has begun."""
        if stream is not None and stream != self.stream:
            raise RuntimeError("this model's FastDecoder was taken by another stream: one "
                               "generation at a time per model (or decode='eager')")  # fmt: skip
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1).to(self.device)
        chunk_size = min(self.window, PREFILL_CHUNK)
        for start in range(0, ids.numel(), chunk_size):
            chunk = ids[start : start + chunk_size]
            positions = torch.arange(self.length, self.length + chunk.numel(), device=self.device)
            if chunk.numel() == 1:
                hidden = self._one_step(chunk, positions)
            elif self.compiled and self.compiled_run and chunk.numel() <= SHORT_RUN:
                hidden = self._short_run(chunk, positions)
            else:
                hidden = self._chunk(chunk, positions)
            self.length += chunk.numel()
        return hidden

    def _one_step(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            try:
                return self.compiled_step(self, ids, positions)
            except Exception as err:  # a compiler or CUDA-graph failure must not end the chat
                import warnings

                warnings.warn(f"torch.compile of the decode step failed ({type(err).__name__}: "
                              f"{str(err)[:300]}); decoding uncompiled", stacklevel=3)  # fmt: skip
                self.compiled, self.compiled_step = False, False  # not again for this model
        # uncompiled (also after a failed try: it rewrites the same slot, safe to repeat):
        # attend only over the slots filled so far
        return self._step(ids, positions, filled=min(self.length + 1, self.window))

    def _short_run(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        try:
            return self.compiled_run(self, ids, positions)
        except Exception as err:  # as in `_one_step`: the pass runs uncompiled from now on
            import warnings

            warnings.warn(f"torch.compile of a short decode pass failed ({type(err).__name__}: "
                          f"{str(err)[:300]}); running it uncompiled", stacklevel=3)  # fmt: skip
            self.compiled_run = False
        return self._chunk(ids, positions)  # it writes after attending: safe to repeat

    def _step(self, ids: torch.Tensor, positions: torch.Tensor,
              filled: int | None = None) -> torch.Tensor:  # fmt: skip
        """One token ``ids [1]`` at ``positions [1]``: write, then attend over the ring. The
        ring fills slot 0, 1, ... before it wraps, so ``filled`` (uncompiled only: a Python
        int would make the compiled step recompile each token) can cut attention to the slots
        in use; the compiled step attends over the whole ring, fixed shapes for CUDA graphs."""
        slot = positions % self.window
        self.slot_position.index_copy_(0, slot, positions)
        bias = None  # after the write the ring holds exactly the last `window` positions, so
        if filled is None:  # only empty slots need masking, and the filled ones have none
            seen = self.slot_position
            bias = self._bias(((seen >= 0) & (seen > positions - self.window))[None, None, None])
        return self._layers(ids, positions, bias, slot, write_first=True,
                            filled=filled)  # fmt: skip

    def _chunk(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``T <= window`` tokens: attend over the ring and the chunk, then write the chunk."""
        keys_at = torch.cat([self.slot_position, positions])
        query = positions[:, None]
        mask = (keys_at >= 0) & (keys_at <= query) & (keys_at > query - self.window)
        hidden = self._layers(ids, positions, self._bias(mask[None, None]), positions % self.window,
                              write_first=False)  # fmt: skip
        self.slot_position.index_copy_(0, positions % self.window, positions)
        return hidden

    def _bias(self, mask: torch.Tensor) -> torch.Tensor:
        """The mask ``[1, 1, T, K]`` as 0 / -inf in the cache's dtype, repeated for the query
        heads grouped under each KV head (`_attend`), made once for all layers."""
        bias = torch.zeros(mask.shape, dtype=self.dtype, device=self.device)
        return bias.masked_fill_(~mask, float("-inf")).repeat(1, 1, self.groups, 1)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias, scale):
        """``q [1, H, T, D]`` over ``keys, values [1, KV, K, D]``: the H / KV query heads of each
        KV head (transformers' order: head h reads KV head h // groups) become one sequence of
        groups x T queries, so query and key heads match and no kernel needs GQA support."""
        _, heads, steps, dim = q.shape
        kv = keys.shape[1]
        grouped = q.reshape(1, kv, self.groups * steps, dim)
        out = torch.nn.functional.scaled_dot_product_attention(grouped, keys, values,
                                                               attn_mask=bias, scale=scale)
        return out.reshape(1, heads, steps, dim)

    def _layers(self, ids, positions, mask, slots, write_first: bool,
                filled: int | None = None) -> torch.Tensor:  # fmt: skip
        from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

        decoder = self.decoder
        x = decoder.embed_tokens(ids)[None]  # [1, T, H]
        cos, sin = decoder.rotary_emb(x, positions[None])
        steps = ids.numel()
        for layer, keys, values in zip(decoder.layers, self.keys, self.values):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, steps, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, steps, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, steps, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            if write_first:
                keys.index_copy_(2, slots, k)
                values.index_copy_(2, slots, v)
                out = self._attend(q, keys[:, :, :filled], values[:, :, :filled], mask,
                                   attn.scaling)  # fmt: skip
            else:
                out = self._attend(q, torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2),
                                   mask, attn.scaling)  # fmt: skip
                keys.index_copy_(2, slots, k)
                values.index_copy_(2, slots, v)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(1, steps, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return decoder.norm(x[0, -1])


def fast_decoder(model, window: int | None = None) -> FastDecoder:
    """The model's `FastDecoder`, made once and kept on the model (so it lives as long as the
    model does), one per window, device and dtype: its ring is allocated once and shared by
    compiled and uncompiled streams, and a compiled step is compiled once."""
    kept = model.__dict__.setdefault("_speechlm_fast_decoders", {})
    param = next(model.parameters())
    key = (window, param.device, param.dtype)
    if key not in kept:
        kept.clear()  # a model moved to another device or dtype: the old ring is stale
        kept[key] = FastDecoder(model, window)
    return kept[key]


@torch.no_grad()
def core_model_output(model, ids) -> torch.Tensor:
    """transformers' own forward of ``ids [N]`` without a cache: the last position's final
    hidden state ``[H]`` (the reference the fast decoder is checked against)."""
    from .model import core_model

    ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
    device = next(model.parameters()).device
    return core_model(model)(input_ids=ids.to(device), use_cache=False).last_hidden_state[0, -1]


def _clock(device) -> float:
    """Seconds, after the device's queued work is done (for timing the forward alone)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def stream_tokens(model, layout: TokenLayout, prompt_ids, max_new_tokens: int,
                  sampling: Sampling | None = None, use_cache: bool = True,
                  start_position: int = 0, stats: dict | None = None,
                  open_text_from: int | None = None, decode: str = "eager",
                  forced: Callable[[int], int | None] | None = None) -> Iterator[int]:  # fmt: skip
    """Yield new ids one by one after ``prompt_ids`` ([N] ids that start at a group boundary,
    offset by ``start_position`` when they continue an earlier stream). ``stats`` (optional)
    receives ``cache_len``: the positions the KV cache holds (bounded by the sliding window).

    ``open_text_from=P`` (an index into the prompt) first yields the prompt's ids from P on as
    the model completes them: its TEXT_PAD text slots there (`open_text_slots`) are sampled
    with the text settings, every other id (audio, real words) is kept; then the
    ``max_new_tokens`` new ids. So N - P + max_new_tokens ids in all; None yields only the new.
    What is fixed goes through the model in one pass: the prompt up to its first open slot, then
    each run of kept ids between two sampled ones.

    ``forced(position)`` (position counted from the stream's start, like ``start_position``)
    may return an id to put at a new position instead of sampling one: the duplex layout's
    user stream comes from live input this way (`duplex_tokens`). A forced id is yielded, fed
    to the model with the ids around it, and never sampled.

    ``decode``: ``"eager"`` runs the model's own forward with transformers' cache (the
    reference); ``"static"`` the `FastDecoder` (a fixed ring cache, no per-token allocation);
    ``"compiled"`` the same with its one-token step under `torch.compile` (CUDA graphs on a
    GPU). In fp32 all three give the same tokens; in bf16 the same up to rounding. ``stats``
    with a ``forward_s`` entry has the seconds spent in the model's forward added to it (the
    rest of a step is sampling and Python).
    """
    if decode not in DECODES:
        raise ValueError(f"decode={decode!r}: choose one of {', '.join(DECODES)}")
    timed = stats is not None and "forward_s" in stats  # time the model's forward alone
    sampling = sampling or Sampling()
    device = next(model.parameters()).device
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    from .model import core_model, output_weight

    decoder, weight = core_model(model), output_weight(model)
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1).tolist()
    if not prompt:
        raise ValueError("generation needs a prompt of at least one token")
    if open_text_from is not None and not 0 <= open_text_from <= len(prompt):
        raise ValueError(f"open_text_from={open_text_from} is outside the prompt "
                         f"(0..{len(prompt)})")  # fmt: skip
    opened = open_text_slots(layout, prompt, open_text_from, start_position)
    first = len(prompt) if open_text_from is None else open_text_from
    history = prompt[:first]
    pending = list(history)  # ids not yet fed to the model
    past = None
    fast = fast_decoder(model) if decode != "eager" and use_cache else None
    stream = fast.begin(compiled=decode == "compiled") if fast is not None else None
    for index in range(first, len(prompt) + max_new_tokens):
        fixed = None
        if index < len(prompt) and not opened[index]:
            fixed = prompt[index]  # kept: no forward pass needed
        elif index >= len(prompt) and forced is not None:
            fixed = forced(start_position + index)
        if fixed is not None:
            next_id = int(fixed)
        else:
            started = _clock(device) if timed else 0.0
            if fast is not None:
                hidden = fast.feed(pending, stream)
                if stats is not None:
                    stats["cache_len"] = fast.cache_len
            elif use_cache:
                out = decoder(input_ids=torch.tensor([pending], device=device), cache=past,
                              use_cache=True)  # fmt: skip
                past = out.cache
                if stats is not None:
                    stats["cache_len"] = max(layer.keys.shape[-2] for layer in past.layers)
            else:
                out = decoder(input_ids=torch.tensor([history], device=device), use_cache=False)
            if fast is None:
                hidden = out.last_hidden_state[0, -1]
            if timed:
                stats["forward_s"] += _clock(device) - started
            pending = []
            kind = layout.kind_of(start_position + index)
            next_id = sample_next(hidden, weight, layout, kind, history, sampling, generator)
        history.append(next_id)
        pending.append(next_id)
        yield next_id


def generate(model, layout: TokenLayout, prompt_ids, max_new_tokens: int,
             sampling: Sampling | None = None, use_cache: bool = True,
             decode: str = "eager") -> list[int]:  # fmt: skip
    """All new ids at once (see `stream_tokens`)."""
    return list(stream_tokens(model, layout, prompt_ids, max_new_tokens, sampling, use_cache,
                              decode=decode))  # fmt: skip


class _InputEnded(Exception):
    """The user's live input has no more groups: the duplex stream ends with it."""


def duplex_tokens(model, layout: TokenLayout, prompt_ids, user_groups: Iterable,
                  sampling: Sampling | None = None, start_position: int = 0,
                  decode: str = "eager") -> Iterator[dict]:  # fmt: skip
    """Full duplex: after ``prompt_ids`` (duplex-layout ids, from a group boundary), one group
    per item of ``user_groups`` (the user's ``codes[K_user, F]`` for that 400 ms, e.g. from
    Mimi's streaming encoder as they arrive): the user's positions are forced from it, never
    sampled, while the assistant's text slots and codebooks are sampled around them. Yields
    ``{"group", "ids", "user_codes"}`` per group; ends when the input does.

    The model hears the user's frame f before it writes its own frame f + 1 (the stream
    holds each frame's assistant codes, then the user's): it listens while it talks, and may
    stay silent, back-channel or talk over."""
    lay = layout
    if not lay.duplex:
        raise ValueError("duplex generation needs the duplex layout (user_codebooks > 0)")
    K, S, F = lay.num_codebooks, lay.text_slots_per_group, lay.frames_per_group
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1).tolist()
    if (start_position + len(prompt)) % lay.group_len:
        raise ValueError("the prompt must end at a group boundary")
    source = iter(user_groups)
    current: dict[int, np.ndarray] = {}

    def forced(position: int) -> int | None:
        group, within = divmod(position, lay.group_len)
        if within == 0:  # a group starts: its user input first (none left: the stream ends)
            try:
                codes = np.asarray(next(source), dtype=np.int64)
            except StopIteration:
                raise _InputEnded from None
            if codes.shape != (lay.user_codebooks, F):
                raise ValueError(f"each user group must be codes[{lay.user_codebooks}, {F}], "
                                 f"got {codes.shape}")  # fmt: skip
            current.clear()
            current[group] = codes
        kind = lay.kind_of(position)
        if not lay.is_user_kind(kind):
            return None
        frame = (within - S) // lay.frame_len
        return lay.id_range(kind)[0] + int(current[group][kind - 1 - K, frame])

    group = (start_position + len(prompt)) // lay.group_len
    tokens = stream_tokens(model, lay, prompt, 1 << 40, sampling,
                           start_position=start_position, decode=decode, forced=forced)
    ids: list[int] = []
    try:
        for token in tokens:
            ids.append(token)
            if len(ids) == lay.group_len:
                yield {"group": group, "ids": ids, "user_codes": current[group]}
                ids, group = [], group + 1
    except _InputEnded:
        return


# -- speech in, speech out --------------------------------------------------------------------


def prompt_from_audio(wav24: np.ndarray, codec, tokenizer, words=None) -> np.ndarray:
    """Token ids of a 24 kHz waveform: padded to whole groups, Mimi-encoded as a stream in
    400 ms steps (exactly as stage 03 encodes the training videos), with ``words`` (e.g. from
    Whisper) in the text slots. Starts at a group boundary. ``[N]`` int64."""
    lay = tokenizer.layout
    group = lay.frames_per_group * codec.frame_samples
    padded = max(group, math.ceil(wav24.size / group) * group)
    wav = np.zeros(padded, np.float32)
    wav[: wav24.size] = np.asarray(wav24, dtype=np.float32)
    codes = codec.encode_stream(wav, lay.frames_per_group)
    return tokenizer.encode(codes.numpy(), words or []).ids


@dataclass
class Response:
    """A generated reply: its ids, text channel, codes and audio, and how it went."""

    ids: list[int]
    text: str  # the model's words: those it wrote over the prompt's lead, then the reply's
    codes: np.ndarray  # [K, F]
    audio: np.ndarray  # [T] float32, 24 kHz
    seconds: float  # wall time
    first_audio_s: float  # wall time until the first group's audio was ready
    stopped: str  # "length" or "silence"
    prompt_ids: list[int] = field(default_factory=list)  # the prompt as the model completed it
    lead_text: str = ""  # the words the model wrote in the prompt's open text slots

    @property
    def audio_s(self) -> float:
        return self.audio.size / 24_000


def lead_groups(seconds: float, layout: TokenLayout) -> int:
    """Groups at a prompt's end that hold the text of words said after it, with text
    ``seconds`` ahead of sound: ``ceil(seconds / group_duration_s)``."""
    return max(0, math.ceil(seconds / layout.group_duration_s - 1e-9))


def stream_response(model, tokenizer, codec, prompt_ids, max_s: float = 10.0,
                    sampling: Sampling | None = None, stop_silence_s: float | None = 2.0,
                    silence_dbfs: float = -45.0, start_position: int = 0,
                    open_text_s: float | None = None, silence_from_s: float | None = None,
                    decode: str = "eager") -> Iterator[dict]:  # fmt: skip
    """Generate group by group after ``prompt_ids``; yield each finished group as soon as its
    400 ms of audio is decoded (Mimi streaming): ``{"group", "ids", "text", "audio",
    "prompt_ids", "lead_ids", "lead_text"}``, the last three the same in every group.

    The reply boundary: the text slots of the prompt's last ``open_text_s`` (default the
    tokenizer's ``text_lead_s``) belong to words said after the prompt, so the model writes
    them first, over the prompt's fixed audio (`stream_tokens` ``open_text_from``): its first
    words are planned before its first sound. ``prompt_ids`` is the prompt so completed,
    ``lead_ids``/``lead_text`` the word ids it wrote there; 0 keeps the prompt as given.
    Stops after ``max_s``, or after ``stop_silence_s`` of silence counted from
    ``silence_from_s`` into the reply on (default ``text_lead_s``: a reply whose words are
    planned in its first seconds is not silent yet). ``decode``: see `stream_tokens`.
    """
    lay = tokenizer.layout
    lead_s = tokenizer.text_lead_s
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1).tolist()
    open_groups = lead_groups(lead_s if open_text_s is None else open_text_s, lay)
    open_from = max(0, len(prompt) - open_groups * lay.group_len) if open_groups else None
    quiet_from = lead_groups(lead_s if silence_from_s is None else silence_from_s, lay)
    groups = max(1, int(round(max_s / lay.group_duration_s)))
    tokens = stream_tokens(model, lay, prompt, groups * lay.group_len, sampling,
                           start_position=start_position, open_text_from=open_from,
                           decode=decode)  # fmt: skip
    lead_ids: list[int] = []
    if open_from is not None:
        opened = open_text_slots(lay, prompt, open_from, start_position)
        for index in range(open_from, len(prompt)):
            prompt[index] = next(tokens)
            if opened[index] and prompt[index] != lay.text_pad_id:
                lead_ids.append(prompt[index])
    lead_text = tokenizer.sp.decode(lead_ids)
    quiet_groups = 0
    with codec.streaming_decoder() as decode:
        for g in range(groups):
            ids = [next(tokens) for _ in range(lay.group_len)]
            text, codes = tokenizer.decode(np.array(ids))
            audio = decode(codes)
            rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
            quiet = 20 * math.log10(max(rms, 1e-10)) < silence_dbfs
            quiet_groups = quiet_groups + 1 if quiet and g >= quiet_from else 0
            yield {"group": g, "ids": ids, "text": text, "audio": audio, "prompt_ids": prompt,
                   "lead_ids": lead_ids, "lead_text": lead_text}  # fmt: skip
            if stop_silence_s and quiet_groups * lay.group_duration_s >= stop_silence_s:
                return


def respond(model, tokenizer, codec, prompt_ids, max_s: float = 10.0,
            sampling: Sampling | None = None, stop_silence_s: float | None = 2.0,
            start_position: int = 0, on_group=None, open_text_s: float | None = None,
            silence_from_s: float | None = None, decode: str = "eager") -> Response:  # fmt: skip
    """Generate a whole reply (see `stream_response`, also for the reply boundary);
    ``on_group(group)`` sees each group as it is ready (e.g. to play it)."""
    start = time.perf_counter()
    first = None
    ids, audio = [], []
    prompt, lead_ids, lead_text = [], [], ""
    stopped = "length"
    lay = tokenizer.layout
    n_groups = max(1, int(round(max_s / lay.group_duration_s)))
    for group in stream_response(model, tokenizer, codec, prompt_ids, max_s, sampling,
                                 stop_silence_s, start_position=start_position,
                                 open_text_s=open_text_s, silence_from_s=silence_from_s,
                                 decode=decode):  # fmt: skip
        if first is None:
            first = time.perf_counter() - start
        ids += group["ids"]
        audio.append(group["audio"])
        prompt, lead_ids, lead_text = group["prompt_ids"], group["lead_ids"], group["lead_text"]
        if on_group:
            on_group(group)
    if len(ids) < n_groups * lay.group_len:
        stopped = "silence"
    _, codes = tokenizer.decode(np.array(ids))
    slots = np.asarray(ids, dtype=np.int64)[lay.kinds(len(ids)) == TEXT_KIND]
    text = tokenizer.sp.decode(lead_ids + [int(i) for i in slots if i != lay.text_pad_id])
    return Response(ids, text, codes, np.concatenate(audio) if audio else np.zeros(0, np.float32),
                    time.perf_counter() - start, first or 0.0, stopped, list(prompt),
                    lead_text)  # fmt: skip


def group_timeline(model, tokenizer, codec, prompt_ids, max_s: float = 4.0,
                   sampling: Sampling | None = None, decode: str = "eager") -> dict:  # fmt: skip
    """When each group of a streamed reply was ready: per group the audio it ends at (seconds
    of reply) and the wall time since the start; plus time to first audio and the real-time
    factor (reply audio over wall time, with Mimi decoding). One group is generated first and
    not timed, so a compiled step's compilation is not counted."""
    lay = tokenizer.layout
    generate(model, lay, prompt_ids, lay.group_len, Sampling(seed=0), decode=decode)  # warm-up
    start = time.perf_counter()
    ready = []

    def on_group(group: dict) -> None:
        ready.append({"group": group["group"], "audio_end_s": (group["group"] + 1) *
                      lay.group_duration_s, "wall_s": time.perf_counter() - start})  # fmt: skip

    response = respond(model, tokenizer, codec, prompt_ids, max_s, sampling or Sampling(seed=0),
                       stop_silence_s=None, on_group=on_group, decode=decode)  # fmt: skip
    return {"decode": decode, "groups": ready, "first_audio_s": response.first_audio_s,
            "realtime_factor": response.audio_s / response.seconds}  # fmt: skip


def continuation_check(model, tokenizer, codec, ids, prompt_s: float = 4.0,
                       continue_s: float = 4.0, open_text_s: float = 0.0,
                       decode: str = "eager") -> dict:  # fmt: skip
    """Prompt with the first ``prompt_s`` of a token stream, continue greedily for
    ``continue_s``, and compare with what really follows: the share of identical tokens, the
    generated and true text channels, and the response.

    The text boundary stays closed by default (``open_text_s=0``): a real stream was tokenized
    on its whole timeline, so the last text slots of its first ``prompt_s`` already hold the
    words that follow and its pads are true pauses. The prompt is then exactly the truth's
    prefix, and a model that memorised the stream gives it back token for token; opening would
    let the model write over those pauses and compare against a prompt the truth never had.
    """
    lay = tokenizer.layout
    p = int(round(prompt_s / lay.group_duration_s)) * lay.group_len
    n = int(round(continue_s / lay.group_duration_s)) * lay.group_len
    ids = np.asarray(ids)[: p + n]
    response = respond(model, tokenizer, codec, ids[:p], n / lay.tokens_per_s,
                       Sampling.greedy(), stop_silence_s=None, open_text_s=open_text_s,
                       decode=decode)  # fmt: skip
    truth = ids[p:]
    same = np.asarray(response.ids[: truth.size]) == truth
    return {"exact_share": float(same.mean()) if same.size else 0.0,
            "text": response.text, "true_text": tokenizer.decode(truth)[0],
            "response": response}  # fmt: skip


GPU_MEMORY_TB_S = {"L4": 0.30, "A10G": 0.60, "A100 80GB": 2.0, "H100 80GB SXM": 3.35}  # HBM
# Host time per generated token for Mistral-7B's 32 layers, in ms, measured by
# benchmarks/bench_generate.py on a narrow model of the same depth (issuing the operations
# costs the same at any width) on this project's 2-core CPU: the forward per decode path, and
# the rest of a step (the kind's logits, sampling, Python). Eager and static measured 20-30 ms
# each across runs, neither reliably ahead: 25 for both. A compiled step on a GPU replays one
# CUDA graph; its host cost is an estimate, not a measurement.
HOST_FORWARD_MS_7B = {"eager": 25.0, "static": 25.0, "compiled": 0.1}
HOST_OUTSIDE_MS_7B = 1.0


def realtime_plan(host_forward_ms: dict | None = None, outside_ms: float = HOST_OUTSIDE_MS_7B,
                  params: float = 7.31e9, bytes_per_param: int = 2, efficiency: float = 0.6,
                  window: int = 4096, layers: int = 32,
                  kv_dim: int = 1024) -> list[dict]:  # fmt: skip
    """Tokens/s of batch-1 decoding of a Mistral-7B-sized model in bf16, per GPU and decode
    path, against the 55 tokens/s real time needs (an estimate). The GPU runs the forward
    while the host issues it, so the forward takes the longer of reading every weight and a
    full ``window`` of keys and values once (at ``efficiency`` of the GPU's bandwidth) and the
    host's time to issue its operations (``host_forward_ms`` per path); then the step's own
    work (``outside_ms``) follows it, since sampling needs the logits."""
    host = host_forward_ms or HOST_FORWARD_MS_7B
    cache_bytes = layers * 2 * kv_dim * window * bytes_per_param  # 0.54 GB for 7B
    rows = []
    for gpu, tb_s in GPU_MEMORY_TB_S.items():
        memory_ms = (params * bytes_per_param + cache_bytes) / (tb_s * 1e12 * efficiency) * 1e3
        for decode, host_ms in host.items():
            tokens_s = 1e3 / (max(memory_ms, host_ms) + outside_ms)
            rows.append({"gpu": gpu, "decode": decode, "memory_ms": round(memory_ms, 1),
                         "host_ms": round(host_ms + outside_ms, 1),
                         "tokens_per_s": round(tokens_s),
                         "realtime_factor": round(tokens_s / 55.0, 1)})  # fmt: skip
    return rows
