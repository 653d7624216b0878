"""Stage 05: our own training loop over MistralForCausalLM (no HF Trainer).

- Weights: trainable parameters stay fp32 (the master copy AdamW updates); frozen ones (the
  base under LoRA) are cast to bf16 on GPUs; the forward runs under bf16 autocast on GPUs and
  in fp32 on CPUs.
- Loss: per target token, the cross-entropy over the ids allowed at its position (the same set
  constrained decoding samples from), weighted by its kind: text, TEXT_PAD, semantic codebook
  0, acoustic codebooks 1..K-1. The mean over weights is minimised; each kind's loss is logged.
- Schedule: linear warmup, then cosine to 10 % of the peak; gradient accumulation; clipping;
  gradient checkpointing really enabled (the decoder's ``gradient_checkpointing`` is checked);
  ``torch.compile`` optional.
- Checkpoints every N steps, written to a temp dir and renamed: trainable weights, optimizer,
  scheduler, RNG states and the data position, so ``resume`` continues the same run (bit for
  bit on CPU). The last k are kept. ``final/`` holds the model to load for chat.
- Logging: ``metrics.jsonl`` in the run dir, and W&B (offline by default in the tiny profile);
  every N steps an audio sample continues a validation chunk (prompt, beep, continuation).
- Several GPUs: ``torchrun`` runs DDP (``fsdp=True`` shards the model for 7B); on CPU with the
  gloo backend for tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import ModelsConfig, TrainConfig, distributed_env, pick_device, pick_dtype
from .data import IGNORE, load_splits
from .manifest import JsonlWriter, read_jsonl, write_json_atomic
from .model import core_model, output_weight
from .tokenizer import TEXT_KIND, SpeechTokenizer, TokenLayout

# the user's stream (duplex layout) is one class of its own: conditioned on, and predicted
# only as much as its weight says
LOSS_KINDS = ("text", "pad", "semantic", "acoustic", "user")


# -- the loss ---------------------------------------------------------------------------------


def loss_classes(layout: TokenLayout, ids: torch.Tensor) -> torch.Tensor:
    """Class of each token of ``ids[B, L]`` (window starts at a group boundary): 0 text,
    1 TEXT_PAD, 2 semantic (codebook 0), 3 acoustic (codebooks 1..K-1), 4 the user's
    codebooks (duplex layout)."""
    kinds = torch.from_numpy(layout.kinds(ids.shape[-1])).to(ids.device)
    classes = torch.where(kinds == 1, 2, torch.where(kinds > 1, 3, 0))
    classes = torch.where(kinds > layout.num_codebooks, 4, classes).expand_as(ids).clone()
    classes[(kinds == TEXT_KIND).expand_as(ids) & (ids == layout.text_pad_id)] = 1
    return classes


def weighted_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                  layout: TokenLayout, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy of the next token, from the decoder's ``hidden[B, L, H]``.

    Each target's softmax runs over its position's allowed ids only (text ids + TEXT_PAD in a
    text slot, one codebook's 2048 ids in an audio slot), so the output layer is evaluated on
    those rows only: ~8x less compute and memory than full logits for the default layout.

    ``weights`` = (text, pad, semantic, acoustic[, user]); the duplex layout's user stream
    weighs ``user`` (default 0: conditioned on, not predicted). A text slot's cross-entropy is
    split into
    the *decision* (a word or TEXT_PAD? ``-log P(pad)`` or ``-log P(not pad)``), weighted by
    ``pad`` in every text slot alike, and the *choice* of word given one is said
    (``-log P(word | not pad)``), weighted by ``text``. Weighting the decision the same on both
    sides keeps the model's pad odds calibrated to the data (a class weight on pads would make
    it learn ``P(pad) ∝ w_pad * q(pad)``), while words can still be trained harder.
    Returns the loss (weighted sum over the summed weights) and ``[5, 2]`` (summed full
    cross-entropy ``-log p(target)``, count) per class (`LOSS_KINDS`) for logging (detached).
    """
    w_text, w_pad, w_sem, w_ac, w_user = (float(w) for w in (*weights, 0.0)[:5])
    targets = labels[:, 1:]
    kinds = layout.kinds(labels.shape[1])[1:]
    ce = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    objective = torch.zeros_like(ce)  # each target's weighted terms
    for kind in np.unique(kinds):
        cols = torch.from_numpy(np.flatnonzero(kinds == kind)).to(hidden.device)
        lo, hi = layout.id_range(int(kind))
        rows = weight[lo:hi]
        tgt = targets[:, cols]
        valid = tgt != IGNORE
        if kind == TEXT_KIND:  # text ids and TEXT_PAD (the last column)
            rows = torch.cat([rows, weight[layout.text_pad_id : layout.text_pad_id + 1]])
            local = torch.where(tgt == layout.text_pad_id, hi - lo, tgt - lo)
        else:
            local = tgt - lo
        logits = (hidden[:, cols] @ rows.T.to(hidden.dtype)).float()  # [B, n, allowed]
        local = torch.where(valid, local, 0)
        picked = logits.gather(-1, local.unsqueeze(-1)).squeeze(-1)
        lse = torch.logsumexp(logits, -1)
        full = lse - picked
        if kind == TEXT_KIND:
            is_pad = tgt == layout.text_pad_id
            lse_words = torch.logsumexp(logits[..., :-1], -1)
            decision = torch.where(is_pad, full, lse - lse_words)
            choice = torch.where(is_pad, 0.0, lse_words - picked)
            terms = w_pad * decision + w_text * choice
        elif layout.is_user_kind(int(kind)):
            terms = w_user * full
        else:
            terms = (w_sem if kind == 1 else w_ac) * full
        ce[:, cols] = torch.where(valid, full, 0.0)
        objective[:, cols] = torch.where(valid, terms, 0.0)
    classes = loss_classes(layout, labels)[:, 1:]
    valid = targets != IGNORE
    # the weight each target's terms carry: a pad slot its decision, a word slot both terms
    per_class = torch.tensor([w_pad + w_text, w_pad, w_sem, w_ac, w_user], device=hidden.device)
    loss = objective.sum() / (per_class[classes] * valid).sum().clamp(min=1e-8)
    parts = torch.stack([torch.stack([ce[(classes == c) & valid].sum(),
                                      ((classes == c) & valid).sum().float()])
                         for c in range(len(LOSS_KINDS))]).detach()  # fmt: skip
    return loss, parts


def kind_loss_shares(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                     layout: TokenLayout, weights) -> dict[str, float]:  # fmt: skip
    """The share of `weighted_loss`'s objective each kind (`LOSS_KINDS`) carries for
    ``weights``: each kind's weighted terms, summed over its targets, over all of them. With
    equal weights a kind's share is its share of targets times its mean cross-entropy."""
    w_text, w_pad, w_sem, w_ac, w_user = (float(w) for w in (*weights, 0.0)[:5])
    carried = (w_pad + w_text, w_pad, w_sem, w_ac, w_user)  # each kind's normaliser weight
    classes = loss_classes(layout, labels)
    sums = {}
    for c, name in enumerate(LOSS_KINDS):
        if not ((classes[:, 1:] == c) & (labels[:, 1:] != IGNORE)).any():
            continue  # a kind this layout or window does not have (the mono layout's user)
        only = labels.masked_fill(classes != c, IGNORE)  # this kind's targets alone
        with torch.no_grad():
            loss, parts = weighted_loss(hidden, weight, only, layout, weights)
        sums[name] = float(loss) * carried[c] * float(parts[c, 1])
    total = sum(sums.values()) or 1.0
    return {name: value / total for name, value in sums.items()}


def fit_text_slot_odds(pad_share: float, weights, steps: int = 300, groups: int = 50,
                       text_vocab: int = 256, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Fit a free model (one learned logit vector) with `weighted_loss` on a stream whose text
    slots are exactly ``pad_share`` TEXT_PAD (the rest words from 10 ids), in a toy layout of
    ``text_vocab`` text ids and one small codebook (so it takes a second). Returns its text-slot
    logits (-inf where a text slot cannot go) and the TEXT_PAD id. With any weights, their
    softmax gives TEXT_PAD about ``pad_share``: the loss keeps the pad odds calibrated."""
    layout = TokenLayout(text_vocab, num_codebooks=1, codebook_size=16)
    gen = torch.Generator().manual_seed(seed)
    n = groups * layout.group_len
    kinds = torch.from_numpy(layout.kinds(n))
    ids = torch.randint(0, 16, (n,), generator=gen) + layout.audio_offset
    text = torch.nonzero(kinds == TEXT_KIND).flatten()
    pads = text[torch.randperm(text.numel(), generator=gen)[: round(pad_share * text.numel())]]
    ids[text] = torch.randint(100, 110, (text.numel(),), generator=gen)
    ids[pads] = layout.text_pad_id
    dim = 8
    hidden = torch.nn.Parameter(torch.randn(dim, generator=gen) * 0.1)
    table = torch.nn.Parameter(torch.randn(layout.padded_vocab_size, dim, generator=gen) * 0.01)
    opt = torch.optim.Adam([hidden, table], lr=0.05)
    for _ in range(steps):
        loss, _ = weighted_loss(hidden.expand(1, n, dim), table, ids[None], layout, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        allowed = torch.from_numpy(layout.kind_masks()[TEXT_KIND])
        return (table @ hidden).masked_fill(~allowed, float("-inf")), layout.text_pad_id


def pad_odds_table(pad_share: float = 0.54, pad_weights=(0.1, 0.25, 0.5, 1.0),
                   steps: int = 200) -> list[dict]:  # fmt: skip
    """For each pad weight: the P(pad) our loss teaches (fitted with `fit_text_slot_odds`)
    and the one a per-class pad weight would teach, against the data's share."""
    rows = []
    for w in pad_weights:
        logits, pad_id = fit_text_slot_odds(pad_share, (1.0, w, 1.0, 0.5), steps=steps)
        ours = float(logits.softmax(-1)[pad_id])
        rows.append({"pad_weight": w, "data": pad_share, "ours": round(ours, 3),
                     "class_weighted": round(class_weighted_pad_odds(pad_share, w), 3)})
    return rows


def class_weighted_pad_odds(pad_share: float, pad_weight: float, text_weight: float = 1.0) -> float:
    """The P(pad) a class-weighted cross-entropy teaches (its minimiser is p ∝ w * q): what a
    per-class pad weight would have done, for comparison."""
    pad = pad_weight * pad_share
    return pad / (pad + text_weight * (1 - pad_share))


class SpeechLMObjective(torch.nn.Module):
    """The model plus its loss in one module, so DDP/FSDP see a single forward."""

    def __init__(self, lm, layout: TokenLayout, weights):
        super().__init__()
        self.lm, self.layout, self.weights = lm, layout, tuple(weights)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        hidden = core_model(self.lm)(input_ids=input_ids, use_cache=False).last_hidden_state
        return weighted_loss(hidden, output_weight(self.lm), labels, self.layout, self.weights)


def lr_factor(step: int, warmup_steps: int, max_steps: int, floor: float = 0.1) -> float:
    """Linear warmup to 1, then cosine down to ``floor``."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# -- the run ----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    history: list[dict] = field(default_factory=list)  # the metrics lines of this call

    def last(self, key: str):
        """The latest value of ``key``: from this call's steps, else from the run's metrics
        (a finished run resumed trains no step but still has its last losses)."""
        values = [h[key] for h in self.history if key in h]
        if not values and (Path(self.run_dir) / "metrics.jsonl").exists():
            values = [m[key] for m in read_metrics(self.run_dir) if key in m]
        return values[-1] if values else None


class FingerprintError(ValueError):
    """Tokens, a run and a model that were not made with the same text tokenizer."""


def check_text_tokenizer(recorded: dict, text_tokenizer, what: str, lm: str) -> None:
    """Refuse a text tokenizer whose fingerprint differs from the one ``recorded``."""
    mine = hashlib.sha1(text_tokenizer.serialized_model_proto()).hexdigest()[:16]
    theirs = recorded.get("text_tokenizer_sha1")
    if theirs != mine:
        raise FingerprintError(
            f"{what} was made with text tokenizer {theirs} (from {recorded.get('lm', '?')}), "
            f"but {lm} has tokenizer {mine}: use the LM it was made with, or tokenize again "
            "with this one")  # fmt: skip


def layout_of_tokens(tokens_root: Path, text_tokenizer, lm: str = "this LM") -> SpeechTokenizer:
    """The tokenizer a token root was made with (its `layout.json`), after checking that
    ``text_tokenizer`` is the one it used."""
    from .preprocess import read_token_layout

    spec = read_token_layout(tokens_root)
    check_text_tokenizer(spec, text_tokenizer, f"the token root {tokens_root}", lm)
    return SpeechTokenizer.from_fingerprint(text_tokenizer, spec)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable_state(model, keep: bool = True) -> dict:
    """Trainable parameters by their name in the language model (not the wrappers), on the
    host. Sharded (FSDP) parameters are gathered whole one at a time, so every rank must call
    this; only a rank with ``keep`` (rank 0) copies them to host memory, the others drop each
    one as soon as it is gathered (a 7B full finetune is 29 GB in fp32, once, not per rank)."""
    state = {}
    for name, p in _language_model(model).named_parameters():
        if not p.requires_grad:
            continue
        sharded = hasattr(p, "full_tensor")
        if not keep and not sharded:
            continue
        full = p.full_tensor() if sharded else p
        if keep:
            state[name] = full.detach().cpu().clone()
        del full
    return state


def train_dtype(name: str | None, device: str) -> torch.dtype:
    """The frozen base's dtype: ``name`` (bf16, fp16, fp32) or the device's (`pick_dtype`)."""
    if name is None:
        return pick_dtype(device)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"dtype={name!r}: choose one of {', '.join(dtypes)}")
    if name == "fp16" and not str(device).startswith("cuda"):
        raise ValueError("fp16 training needs a CUDA GPU (its loss scaling); use bf16 or fp32")
    return dtypes[name]


FSDP_MIXED_DTYPES_TORCH = (2, 8)  # pytorch/pytorch#154103: frozen params of another dtype


def check_fsdp_dtypes(model) -> None:
    """FSDP2 before torch 2.8 wants one dtype per sharded unit, trainable or not: a bf16 base
    with fp32 LoRA (what trains is upcast to fp32) fails deep inside its first forward. Say so
    before anything is sharded."""
    params = list(model.parameters())
    frozen = {p.dtype for p in params if not p.requires_grad} - {torch.float32}
    version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if frozen and any(p.requires_grad for p in params) and version < FSDP_MIXED_DTYPES_TORCH:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in frozen))
        raise RuntimeError(
            f"--fsdp with a {names} base and fp32 trainable weights needs torch>=2.8 (this is "
            f"{torch.__version__}): FSDP2 before it rejects frozen and trainable weights of "
            "different dtypes in one unit. Upgrade torch, train with DDP (no --fsdp), or use "
            "--dtype fp32.")  # fmt: skip


def join_process_group() -> None:
    """Join torchrun's process group (nccl on GPUs, gloo on CPUs) once per process, and leave
    it before the interpreter is torn down: a process that exits still in a gloo group can
    abort (SIGABRT, "terminate called without an active exception") when gloo's threads free
    their last tensors after Python is gone (pytorch#190489), failing a run that finished."""
    import atexit

    if torch.distributed.is_initialized():
        return
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    atexit.register(leave_process_group)


def leave_process_group() -> None:
    """Destroy the default process group if one is up (idempotent)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def end_distributed_process() -> None:
    """End a torchrun rank whose command has finished (the CLI calls it; nothing happens in a
    process that joined no group): wait for every rank, leave the group, flush the output and
    exit at once, skipping the interpreter's teardown. Leaving the group alone was not enough:
    a 2-rank FSDP run that had trained and saved everything still aborted in teardown once
    ("terminate called without an active exception"), and torchrun then fails the run."""
    import os
    import sys

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _language_model(model):
    inner = getattr(model, "_orig_mod", model)  # torch.compile
    inner = _unwrap(inner)
    return inner.lm if isinstance(inner, SpeechLMObjective) else inner


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if
                  (p / "trainer.pt").exists())  # fmt: skip
    return done[-1] if done else None


class Trainer:
    """One training run in ``run_dir`` (see the module doc). Use `fit`."""

    def __init__(self, cfg: TrainConfig, models: ModelsConfig, tokens_root: str | Path,
                 run_dir: str | Path, device: str | None = None):  # fmt: skip
        from .checkpoints import load_text_tokenizer
        from .model import build_speech_lm, count_parameters, kept_layers

        self.cfg, self.models = cfg, models
        self.tokens_root, self.run_dir = Path(tokens_root), Path(run_dir)
        self.rank, self.world, local_rank = distributed_env()
        if self.world > 1:
            join_process_group()
        if device is None:
            device = f"cuda:{local_rank}" if pick_device() == "cuda" else pick_device()
        self.device = device
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        from .checkpoints import lm_config
        from .preprocess import read_token_layout

        self.token_layout = read_token_layout(self.tokens_root)  # the models the tokens need
        self.models = models = models.follow(self.token_layout)
        self.tokenizer = layout_of_tokens(self.tokens_root, load_text_tokenizer(models), models.lm)
        self.layout = self.tokenizer.layout
        seq_len = cfg.seq_len // self.layout.group_len * self.layout.group_len
        self.splits = load_splits(self.tokens_root, self.layout, seq_len, cfg.val_fraction,
                                  cfg.seed, cfg.train_chunks)  # fmt: skip
        if len(self.splits.train) < max(1, self.world):  # each rank must have a window
            raise ValueError(f"{len(self.splits.train)} training windows for {self.world} "
                             "rank(s): every rank needs at least one; tokenize more audio, "
                             "lower --seq-len or use fewer GPUs")  # fmt: skip
        if cfg.epochs:
            self.cfg = cfg = schedule_for_data(cfg, len(self.splits.train), self.world)
        # the frozen base in the device's compute dtype (bf16 where native, fp16 on older GPUs
        # with loss scaling, fp32 on CPUs); what trains in fp32 (model.upcast_trainable)
        self.dtype = train_dtype(cfg.dtype, device)
        self.autocast = self.dtype if self.dtype != torch.float32 else None
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        shape = lm_shape(lm_config(models))
        layers = len(kept_layers(shape["layers"], cfg.keep_every, cfg.keep_layers))
        self.memory = training_memory(self.layout, shape, seq_len, cfg.batch_size, cfg.lora_r,
                                      layers, self.dtype.itemsize, cfg.grad_checkpointing,
                                      self.world if cfg.fsdp else 1)  # fmt: skip
        if cfg.memory_check:
            check_memory(self.memory, device)
        torch.manual_seed(cfg.seed)
        # FSDP: each rank loads on its own GPU, then shards (see _wrap_distributed)
        sharding = cfg.fsdp and self.world > 1  # then each layer is upcast as it is sharded
        model = build_speech_lm(models, self.layout, cfg.lora_r, cfg.keep_every,
                                list(cfg.keep_layers) if cfg.keep_layers else None,
                                device=device, seed=cfg.seed, dtype=self.dtype,
                                upcast=not sharding)  # fmt: skip
        if cfg.grad_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
            assert core_model(model).gradient_checkpointing, "gradient checkpointing is off"
        model.config.use_cache = False
        self.params = count_parameters(model)
        self.lm = model
        self.model = SpeechLMObjective(model, self.layout, cfg.loss_weights)
        if self.world > 1:
            self.model = self._wrap_distributed(self.model)
        if cfg.compile:
            self.model = torch.compile(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.dim() >= 2]
        no_decay = [p for p in trainable if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps))
        self.step = 0
        self.epoch, self.cursor = 0, 0  # data position: epoch and index in its permutation

    def _wrap_distributed(self, model):
        if self.cfg.fsdp:  # FSDP2: each decoder layer's parameters sharded across ranks
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            from .model import upcast_trainable

            check_fsdp_dtypes(model)
            mesh = init_device_mesh("cuda" if self.device.startswith("cuda") else "cpu",
                                    (self.world,))  # fmt: skip
            for layer in core_model(model.lm).layers:  # fp32 one layer at a time, then its
                upcast_trainable(layer)  # shard: never a whole fp32 copy on one GPU
                fully_shard(layer, mesh=mesh)
            upcast_trainable(model)  # what trains outside the layers (the new rows)
            return fully_shard(model, mesh=mesh)
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device] if self.device.startswith("cuda") else None)

    # -- data --

    def _order(self, epoch: int) -> list[int]:
        """This rank's window order in ``epoch``: a seeded permutation, split across ranks."""
        n = len(self.splits.train)
        perm = np.random.default_rng(self.cfg.seed * 1000 + epoch).permutation(n).tolist()
        usable = n // self.world * self.world or n  # equal counts keep DDP ranks in step
        return perm[:usable][self.rank :: self.world] if self.world > 1 else perm

    def _next_batch(self) -> dict:
        items = []
        while len(items) < self.cfg.batch_size:
            order = self._order(self.epoch)
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
                continue
            items.append(self.splits.train[order[self.cursor]])
            self.cursor += 1
        return {k: torch.stack([it[k] for it in items]).to(self.device) for k in items[0]}

    # -- steps --

    def _forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.autocast(kind, dtype=self.autocast, enabled=self.autocast is not None):
            return self.model(batch["input_ids"], batch["labels"])

    def _gradient_sync(self, on: bool):
        """A context in which backward all-reduces (DDP) or reduce-scatters (FSDP) gradients
        only when ``on``: accumulation micro-batches before the last keep theirs local.

        Under FSDP a local gradient is a whole, unsharded one on every rank: cheap for LoRA,
        but 29 GB per GPU for a 7B full finetune, the memory FSDP is there to save. So FSDP
        skips the sync only when LoRA trains; a full finetune reduce-scatters every
        micro-batch."""
        from contextlib import nullcontext

        if self.world == 1:
            return nullcontext()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(on or not self.cfg.lora_r)
            return nullcontext()
        return nullcontext() if on else self.model.no_sync()  # DDP

    def full_root(self):
        """A context in which the model can be called outside its own forward (sampling):
        under FSDP the root's embedding, norm and head are gathered whole, then resharded."""
        from contextlib import contextmanager

        @contextmanager
        def gathered():
            sharded = hasattr(self.model, "unshard") and self.world > 1
            if sharded:
                self.model.unshard()
            try:
                yield
            finally:
                if sharded:
                    self.model.reshard()

        return gathered()

    def _reshard(self) -> None:
        """FSDP2 leaves the root's parameters gathered after a forward without backward (an
        evaluation); shard them again, so the optimizer's parameters are the module's."""
        if self.world > 1 and hasattr(self.model, "reshard"):
            self.model.reshard()

    def _fsdp_optimizer(self) -> bool:
        return self.cfg.fsdp and self.world > 1

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def train_step(self) -> dict:
        self.model.train()
        parts = torch.zeros(len(LOSS_KINDS), 2)
        total = 0.0
        for micro in range(self.cfg.grad_accum):
            last = micro == self.cfg.grad_accum - 1
            with self._gradient_sync(last):  # communicate once per step, not per micro-batch
                loss, p = self._forward(self._next_batch())
                scaled = loss / self.cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += float(loss.detach()) / self.cfg.grad_accum
            parts += p.cpu()
        if self.scaler:  # fp16: unscale before clipping; a step with inf/nan grads is skipped
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.cfg.clip_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        out = {"step": self.step, "loss": total, "grad_norm": float(grad_norm),
               "lr": self.scheduler.get_last_lr()[0]}  # fmt: skip
        out.update({f"loss_{k}": float(s / n) for k, (s, n) in zip(LOSS_KINDS, parts) if n})
        return out

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None) -> dict:
        """Validation loss per kind over the first windows of the validation split."""
        self.model.eval()
        split = self.splits.val if len(self.splits.val) else self.splits.train
        n = min(len(split), (max_batches or self.cfg.eval_batches) * self.cfg.batch_size)
        parts = torch.zeros(len(LOSS_KINDS), 2)
        losses = []
        for start in range(0, n, self.cfg.batch_size):
            items = [split[i] for i in range(start, min(n, start + self.cfg.batch_size))]
            batch = {k: torch.stack([it[k] for it in items]).to(self.device) for k in items[0]}
            loss, p = self._forward(batch)
            losses.append(float(loss))
            parts += p.cpu()
        self._reshard()
        out = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
        out.update({f"val_loss_{k}": float(s / c) for k, (s, c) in zip(LOSS_KINDS, parts) if c})
        return out

    # -- checkpoints --

    def save_checkpoint(self) -> Path | None:
        """Atomic: written to a temp dir, renamed; keeps the last ``cfg.keep_last``."""
        weights = _trainable_state(self.model, keep=self.rank == 0)  # FSDP: every rank gathers
        ckpt_root = self.run_dir / "checkpoints"
        final = ckpt_root / f"step-{self.step:07d}"
        tmp = ckpt_root / f".tmp-step-{self.step:07d}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        if self._fsdp_optimizer():  # each rank writes its own shard of the Adam state
            self._reshard()
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            dcp.save({"optimizer": get_optimizer_state_dict(self.model, self.optimizer)},
                     checkpoint_id=str(tmp / "optimizer"))  # fmt: skip
        if self.world > 1:
            torch.save(_rng_state(), tmp / f"rng-rank{self.rank}.pt")
        self._barrier()
        if self.rank != 0:
            return None
        torch.save(weights, tmp / "weights.pt")
        optimizer = None if self._fsdp_optimizer() else self.optimizer.state_dict()
        torch.save({"optimizer": optimizer,
                    "scheduler": self.scheduler.state_dict(), "step": self.step,
                    "scaler": self.scaler.state_dict() if self.scaler else None,
                    "epoch": self.epoch, "cursor": self.cursor, "rng": _rng_state(),
                    "config": asdict(self.cfg)}, tmp / "trainer.pt")  # fmt: skip
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(ckpt_root.glob("step-*"))[: -self.cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path) -> None:
        weights = torch.load(path / "weights.pt", map_location="cpu", mmap=True)  # read lazily
        params = dict(_language_model(self.model).named_parameters())
        for name, value in weights.items():
            p = params[name]
            if hasattr(p, "device_mesh"):  # an FSDP shard: keep this rank's part
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
            p.data.copy_(value)
        state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        if self._fsdp_optimizer():
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import (
                get_optimizer_state_dict,
                set_optimizer_state_dict,
            )

            optimizer = {"optimizer": get_optimizer_state_dict(self.model, self.optimizer)}
            dcp.load(optimizer, checkpoint_id=str(path / "optimizer"))
            set_optimizer_state_dict(self.model, self.optimizer, optimizer["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.cursor = state["step"], state["epoch"], state["cursor"]
        own = path / f"rng-rank{self.rank}.pt"  # each rank its own generators
        _set_rng_state(torch.load(own, weights_only=False) if own.exists() else state["rng"])

    def save_final(self) -> Path:
        """``final/``: the trainable weights plus what rebuilds the model (`load_run`)."""
        final = self.run_dir / "final"
        weights = _trainable_state(self.model, keep=self.rank == 0)  # every rank (FSDP)
        if self.rank == 0:
            tmp = self.run_dir / ".tmp-final"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            torch.save(weights, tmp / "weights.pt")
            write_json_atomic(tmp / "speechlm.json", self.describe())
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        return final

    def _check_same_model(self) -> None:
        """A resume must rebuild the model the run trained: same LoRA rank and layers."""
        path = self.run_dir / "run.json"
        if not path.exists():
            return
        meta = json.loads(path.read_text())
        mine = self.describe()
        differ = [k for k in ("lora_r", "keep_every", "keep_layers") if meta.get(k) != mine[k]]
        if differ:
            raise ValueError(
                f"{self.run_dir} was trained with " +
                ", ".join(f"{k}={meta.get(k)}" for k in differ) + "; this run asks for " +
                ", ".join(f"{k}={mine[k]}" for k in differ) + ": resume with the run's own "
                "settings (notebook 05: train.recipe_config(cfg, models, run_dir=run_dir)) or "
                "train into a new --run-dir")  # fmt: skip

    def describe(self) -> dict:
        return {"layout": self.tokenizer.fingerprint(), "lora_r": self.cfg.lora_r,
                "keep_every": self.cfg.keep_every,
                "keep_layers": list(self.cfg.keep_layers) if self.cfg.keep_layers else None,
                "lm": self.models.lm,  # the codec and aligner the tokens were made with:
                "mimi": self.token_layout.get("mimi", self.models.mimi),
                "whisper": self.token_layout.get("whisper", self.models.whisper),
                "text_source": self.token_layout.get("text_source"),
                "params": self.params, "step": self.step, "train_chunks": self.cfg.train_chunks,
                "val_videos": sorted(self.splits.val_videos),
                "tokens_root": str(self.tokens_root.resolve()),
                "recipe": {k: getattr(self.cfg, k) for k in RECIPE_FIELDS}}  # fmt: skip

    def ranks_in_sync(self) -> bool:
        """Whether every rank holds the same trainable weights (a checksum, all-gathered)."""
        if self.world == 1:
            return True
        total = sum(float(w.double().sum()) for w in _trainable_state(self.model).values())
        sums = [None] * self.world
        torch.distributed.all_gather_object(sums, total)
        return all(abs(x - sums[0]) <= 1e-9 * max(1.0, abs(sums[0])) for x in sums)

    # -- the loop --

    def fit(self, max_steps: int | None = None, resume: bool = False, progress: bool = True,
            sample_fn=None, stop_after: int | None = None) -> TrainResult:  # fmt: skip
        """Train until ``max_steps`` (default ``cfg.max_steps``); ``resume`` continues from the
        latest checkpoint. ``sample_fn(trainer)`` returns a dict to log (audio samples).
        ``stop_after=N`` stops after step N with a checkpoint and no ``final/``, the schedule
        unchanged: an interruption on purpose, which ``resume`` continues."""
        from tqdm.auto import tqdm

        max_steps = max_steps or self.cfg.max_steps
        stopping = stop_after is not None and stop_after < max_steps
        if resume and (ckpt := latest_checkpoint(self.run_dir)):
            self._check_same_model()
            self.load_checkpoint(ckpt)
        start_step = self.step
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            write_json_atomic(self.run_dir / "run.json", self.describe())
        logger = _Logger(self.run_dir, self.cfg, enabled=self.rank == 0)
        history = []
        target = stop_after if stopping else max_steps
        if progress and self.rank == 0 and self.step >= target:  # no bar with nothing to do
            print(f"train: {self.run_dir.name} is at step {self.step} of {max_steps} already "
                  "(done before)")  # fmt: skip
        bar = tqdm(total=max_steps, initial=self.step, desc="train", unit="step",
                   disable=not progress or self.rank != 0 or self.step >= target)  # fmt: skip
        tokens_per_step = self.cfg.batch_size * self.cfg.grad_accum * self.splits.train.seq_len
        try:
            while self.step < target:
                start = time.perf_counter()
                metrics = self.train_step()
                seconds = time.perf_counter() - start
                metrics["tokens_per_s"] = tokens_per_step * self.world / seconds
                if self.step % self.cfg.eval_every == 0 or self.step == max_steps:
                    metrics.update(self.evaluate())
                if sample_fn and self.cfg.sample_every and self.step % self.cfg.sample_every == 0:
                    metrics.update(sample_fn(self) or {})
                history.append(metrics)
                logger.log(metrics)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                if self.step % self.cfg.save_every == 0 or self.step == max_steps or \
                        (stopping and self.step == stop_after):  # fmt: skip
                    if self.world > 1:
                        in_sync = self.ranks_in_sync()
                        logger.log({"step": self.step, "ranks_in_sync": in_sync})
                    self.save_checkpoint()
        finally:
            bar.close()
            logger.close()
        if not stopping and (self.step > start_step or not self._final_is_current()):
            self.save_final()
        return TrainResult(self.run_dir, self.step, history)

    def _final_is_current(self) -> bool:
        """Whether ``final/`` already holds this step's model: a finished run fitted again (a
        notebook re-run, ``train --resume``) trains no step and rewrites nothing, so what keys
        on final's weights file (stage 07's scores) stays valid. Rank 0 decides for all."""
        final = self.run_dir / "final"
        current = [(final / "weights.pt").exists() and (final / "speechlm.json").exists() and
                   json.loads((final / "speechlm.json").read_text()).get("step") == self.step]
        if self.world > 1:
            torch.distributed.broadcast_object_list(current, src=0)
        return bool(current[0])


def wandb_credentials() -> bool:
    """Whether W&B can log in without asking: ``$WANDB_API_KEY``, or the netrc entry that
    ``wandb login`` writes (``$NETRC``, else ``~/.netrc`` or ``~/_netrc``) for its host."""
    import netrc
    import os
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    paths = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for path in paths:
        try:
            if netrc.netrc(os.path.expanduser(path)).authenticators(host):
                return True
        except (OSError, netrc.NetrcParseError):
            continue
    return False


def wandb_mode(mode: str) -> tuple[str, str | None]:
    """The W&B mode to run with, and why it is not ``mode``: "online" without credentials
    would stop a notebook's Run All at a key prompt (or fail in a headless kernel), so such a
    run logs offline, for `wandb sync` later."""
    if mode != "online" or wandb_credentials():
        return mode, None
    return "offline", ("W&B: no API key ($WANDB_API_KEY, a Colab secret of that name, or "
                       "`wandb login`), so this run logs offline; `wandb sync` uploads it later")


class _Logger:
    """metrics.jsonl always; W&B when ``cfg.wandb_mode`` is not "disabled" (offline when
    "online" has no credentials: `wandb_mode`)."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool):
        self.enabled = enabled
        self.file = JsonlWriter(run_dir / "metrics.jsonl") if enabled else None
        self.wandb = None
        if enabled and cfg.wandb_mode != "disabled":
            import wandb

            mode, why = wandb_mode(cfg.wandb_mode)
            if why:
                print(why)
            id_file = run_dir / "wandb_id.txt"  # the same W&B run across resumes
            if not id_file.exists():
                id_file.write_text(uuid.uuid4().hex[:12])
            self.wandb = wandb.init(project=cfg.wandb_project, name=run_dir.name,
                                    id=id_file.read_text().strip(), resume="allow",
                                    dir=str(run_dir), mode=mode,
                                    config=asdict(cfg),
                                    settings=wandb.Settings(silent=True))  # fmt: skip

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        plain = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        self.file.write(plain)
        if self.wandb is not None:
            import wandb

            media = {k: (wandb.Audio(v["audio"], sample_rate=v["rate"], caption=v.get("text"))
                         if isinstance(v, dict) and "audio" in v else v)
                     for k, v in metrics.items() if k not in plain}  # fmt: skip
            self.wandb.log({**plain, **media}, step=metrics["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


BEEP_HZ, BEEP_S = 880.0, 0.25  # marks where the prompt ends in a sample


def make_sample_fn(models: ModelsConfig, prompt_s: float = 4.0, continue_s: float = 4.0,
                   temperature: float = 0.8):  # fmt: skip
    """A ``sample_fn`` for `Trainer.fit`: continues the first validation window's first
    ``prompt_s`` seconds; the audio is the prompt, a short beep, then the continuation, all
    decoded by Mimi; the text channel of the continuation is the caption. On the duplex
    layout the user's positions of the continuation are the window's own user codes, forced
    as duplex generation forces live input (the run does not learn to predict them: sampled,
    they would be noise), and only the assistant is sampled; its audio is the assistant's.
    ``sample["ids"]`` holds the continuation's ids."""
    from .codec import Codec
    from .duplex import continue_with_stored_user
    from .generate import Sampling, generate

    state = {}

    def sample(trainer: Trainer) -> dict:
        if "codec" not in state:
            state["codec"] = Codec.load(models, trainer.layout.num_codebooks, trainer.device)
        lay = trainer.layout
        split = trainer.splits.val if len(trainer.splits.val) else trainer.splits.train
        item = split[0]
        ids = item["input_ids"][: int((item["labels"] != IGNORE).sum())]  # without padding
        groups = max(1, round(prompt_s / lay.group_duration_s))  # round: 1.2 / 0.4 < 3
        new_groups = round(continue_s / lay.group_duration_s)
        if lay.duplex:  # the user's codes come from the window: it must hold the continuation
            window_groups = ids.numel() // lay.group_len
            if window_groups < 2:
                return {}  # no group left to continue with the user's own codes
            groups = max(1, min(groups, window_groups - 1))
            new_groups = min(new_groups, window_groups - groups)
        prompt = ids[: groups * lay.group_len]
        lm = _language_model(trainer.model)
        lm.eval()
        lm.config.use_cache = True
        sampling = Sampling(temperature, temperature, seed=trainer.step)
        with trainer.full_root():  # FSDP: the root's tables whole while generating
            if lay.duplex:
                new = continue_with_stored_user(lm, lay, ids.numpy(), groups, new_groups,
                                                sampling).tolist()  # fmt: skip
            else:
                new = generate(lm, lay, prompt, new_groups * lay.group_len, sampling)
        lm.config.use_cache = False
        codec = state["codec"]
        _, prompt_codes = trainer.tokenizer.decode(prompt.numpy())
        text, new_codes = trainer.tokenizer.decode(np.array(new))
        rate = codec.sample_rate_hz
        t = np.arange(int(BEEP_S * rate)) / rate
        beep = 0.3 * np.sin(2 * np.pi * BEEP_HZ * t).astype(np.float32)
        audio = np.concatenate([codec.decode(torch.from_numpy(prompt_codes))[0, 0].numpy(), beep,
                                codec.decode(torch.from_numpy(new_codes))[0, 0].numpy()])
        return {"sample": {"audio": audio, "rate": rate, "text": text, "ids": new},
                "sample_text": text}

    return sample


def run_models(run_dir: str | Path, models: ModelsConfig) -> ModelsConfig:
    """``models`` following the LM, Mimi and Whisper a run recorded (`ModelsConfig.follow`):
    chat must encode and decode with the codec the run's tokens were made with."""
    meta = json.loads((Path(run_dir) / "run.json").read_text())
    return models.follow(meta)


def read_metrics(run_dir: str | Path) -> list[dict]:
    return list(read_jsonl(Path(run_dir) / "metrics.jsonl"))


def load_run(run_dir: str | Path, models: ModelsConfig | None = None, device: str = "cpu",
             dtype: torch.dtype | None = None, attention_window: int | None = None,
             merge: bool = True, checkpoint: str | Path | None = None):  # fmt: skip
    """The trained model of a run (``final/``, else its latest checkpoint, or ``checkpoint``:
    a directory holding ``weights.pt`` or its name in the run, e.g. ``step-0000050``) and its
    tokenizer,
    loaded lean: the base straight into ``dtype`` (default `config.pick_dtype(device)`) on
    ``device``, the trained weights memory-mapped and (``merge``, the default) folded into a
    plain model (`model.merge_trained`: no adapters at chat time); ``merge=False`` rebuilds the
    peft model as trained, for comparison.

    The base LM is the one the run recorded unless ``models`` chose another on purpose or the
    recorded local path is gone (`ModelsConfig.follow`); either way its text tokenizer must
    match the run's. ``attention_window``: see `checkpoints.load_lm`."""
    from .checkpoints import load_text_tokenizer
    from .model import build_speech_lm, for_inference, kept_layers, merge_trained

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    spec = meta["layout"]
    if models is None:
        models = ModelsConfig(profile="full", data_dir=run_dir, lm=meta["lm"],
                              mimi=meta["mimi"], whisper=meta["whisper"])  # fmt: skip
    models = models.follow(meta)
    text_tokenizer = load_text_tokenizer(models)
    check_text_tokenizer({**spec, "lm": meta["lm"]}, text_tokenizer, f"the run {run_dir}",
                         models.lm)  # fmt: skip
    tokenizer = SpeechTokenizer.from_fingerprint(text_tokenizer, spec)
    source = run_dir / "final" if (run_dir / "final" / "weights.pt").exists() else \
        latest_checkpoint(run_dir)  # fmt: skip
    if checkpoint is not None:
        source = Path(checkpoint)
        if not (source / "weights.pt").exists():
            named = run_dir / "checkpoints" / str(checkpoint)
            source = named if str(checkpoint) != "final" else run_dir / "final"
        if not (source / "weights.pt").exists():
            raise FileNotFoundError(f"{run_dir}: no checkpoint {checkpoint} (its weights.pt)")
    if source is None:
        raise FileNotFoundError(f"{run_dir} has no final/ or checkpoint: train it first")
    dtype = dtype or pick_dtype(device)
    from .checkpoints import lm_config

    shape = lm_shape(lm_config(models))
    shape["layers"] = len(kept_layers(shape["layers"], meta["keep_every"], meta["keep_layers"]))
    check_memory(inference_memory(shape, tokenizer.layout.padded_vocab_size,
                                  attention_window or 4096, dtype.itemsize), device,
                 f"chat with {run_dir.name}", "A run trained with --keep-every 2 (the T4 "
                 "recipe) needs about half; or use a GPU with more memory.")  # fmt: skip
    trained = torch.load(source / "weights.pt", map_location="cpu", mmap=True, weights_only=True)
    if merge:  # a plain model, the trained weights folded in (no adapters, no peft)
        model = build_speech_lm(models, tokenizer.layout, None, meta["keep_every"],
                                meta["keep_layers"], device=device, dtype=dtype,
                                attention_window=attention_window, upcast=False)  # fmt: skip
        merge_trained(model, trained, tokenizer.layout)
        del trained
        return for_inference(model), tokenizer
    model = build_speech_lm(models, tokenizer.layout, meta["lora_r"], meta["keep_every"],
                            meta["keep_layers"], device=device, dtype=dtype,
                            attention_window=attention_window, upcast=False)  # fmt: skip
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in trained.items():
            params[name].copy_(value)
    return for_inference(model), tokenizer


# -- the paper plan for 7B ----------------------------------------------------------------------

MISTRAL_7B = dict(hidden=4096, layers=32, intermediate=14336, kv_dim=1024)
GPU_BF16_TFLOPS = {"A100 80GB": 312.0, "H100 80GB SXM": 989.0}  # dense peak


def mistral_params(hidden: int, layers: int, intermediate: int, kv_dim: int,
                   vocab: int) -> dict:  # fmt: skip
    """Parameter counts of a Mistral-shaped model (per layer, all layers, embeddings)."""
    per_layer = hidden * (2 * hidden + 2 * kv_dim) + 3 * hidden * intermediate + 2 * hidden
    lora_per_layer_r1 = (2 * hidden) * 2 + (hidden + kv_dim) * 2 + 3 * (hidden + intermediate)
    return {"per_layer": per_layer, "layers": per_layer * layers, "embeddings": 2 * vocab * hidden,
            "lora_per_rank": lora_per_layer_r1 * layers}  # fmt: skip


def lm_shape(config) -> dict:
    """``{hidden, layers, intermediate, kv_dim}`` of a ``MistralConfig``."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return dict(hidden=config.hidden_size, layers=config.num_hidden_layers,
                intermediate=config.intermediate_size,
                kv_dim=config.num_key_value_heads * head_dim)  # fmt: skip


CUDA_OVERHEAD_GB = 1.0  # CUDA context, allocator slack and workspaces, roughly


def training_memory(layout: TokenLayout, shape: dict = MISTRAL_7B, seq_len: int = 4092,
                    batch_size: int = 4, lora_r: int | None = 64, layers: int | None = None,
                    weight_bytes: int = 2, grad_checkpointing: bool = True,
                    shards: int = 1) -> dict:  # fmt: skip
    """GB one GPU needs to train a Mistral-shaped model with this recipe: the frozen base in
    ``weight_bytes`` (2: bf16/fp16), fp32 master copies, gradients and AdamW moments of what
    trains (everything when ``lora_r`` is None), activations (one input per layer with
    gradient checkpointing, plus one layer's full set) and the kind-restricted logits.
    ``layers`` kept after pruning (default all); ``shards``: FSDP ranks sharing the states."""
    layers = layers or shape["layers"]
    p = mistral_params(vocab=layout.padded_vocab_size, **shape)
    base = p["per_layer"] * layers + p["embeddings"]
    new_rows = 2 * (layout.vocab_size - layout.text_vocab_size) * shape["hidden"]
    if lora_r:
        trainable = lora_r * p["lora_per_rank"] * layers / shape["layers"] + new_rows
        weights = base * weight_bytes + trainable * 4
    else:
        trainable, weights = base, base * 4
    state = trainable * (4 + 8)  # fp32 gradients + AdamW moments
    act_bytes = 2 if weight_bytes == 2 else 4
    tokens = batch_size * seq_len
    layer_acts = tokens * (shape["hidden"] * 16 + shape["intermediate"] * 6) * act_bytes / 2
    if grad_checkpointing:
        acts = layers * tokens * shape["hidden"] * act_bytes + layer_acts
    else:
        acts = layers * layer_acts
    avg_allowed = (layout.text_slots_per_group * (layout.text_vocab_size + 1) +
                   (layout.group_len - layout.text_slots_per_group) * layout.codebook_size) \
        / layout.group_len  # fmt: skip
    acts += tokens * avg_allowed * 4
    gb = 1e9
    total = (weights + state) / shards + acts
    return {"trainable_params_M": round(trainable / 1e6), "weights_GB": round(weights / gb, 1),
            "grads_adam_GB": round(state / gb, 1), "activations_GB": round(acts / gb, 1),
            "total_GB": round(total / gb + CUDA_OVERHEAD_GB, 1)}  # fmt: skip


def inference_memory(shape: dict = MISTRAL_7B, vocab: int = 40256, window: int = 4096,
                     weight_bytes: int = 2) -> dict:  # fmt: skip
    """GB to generate with a merged model: its weights and a KV cache of ``window`` positions."""
    p = mistral_params(vocab=vocab, **shape)
    weights = (p["layers"] + p["embeddings"]) * weight_bytes
    cache = shape["layers"] * 2 * shape["kv_dim"] * window * weight_bytes
    gb = 1e9
    return {"weights_GB": round(weights / gb, 1), "kv_cache_GB": round(cache / gb, 2),
            "total_GB": round((weights + cache) / gb + CUDA_OVERHEAD_GB, 1)}  # fmt: skip


def memory_plan(layout: TokenLayout, seq_len: int = 4092, batch_size: int = 4,
                lora_r: int = 64, shape: dict = MISTRAL_7B) -> list[dict]:  # fmt: skip
    """GB needed to train a Mistral-7B-shaped model on one GPU, per option (`training_memory`)."""
    rows = []
    for name, r, layers, nbytes in (
        (f"full finetune, {shape['layers']} layers", None, None, 4),
        (f"prune: keep every 2nd layer ({shape['layers'] // 2}), full finetune", None,
         shape["layers"] // 2, 4),
        (f"LoRA r={lora_r} + new token rows, base in bf16", lora_r, None, 2),
    ):  # fmt: skip
        plan = training_memory(layout, shape, seq_len, batch_size, r, layers, nbytes)
        rows.append({"option": name, **plan, "fits_80GB": plan["total_GB"] < 80 * 0.93})
    return rows


# Training recipes for 7B, best first; `recipe_for_gpu` names the first that fits a GPU.
RECIPES = (
    dict(name="LoRA r=64, all 32 layers, 4 x 4092 tokens", lora_r=64, keep_every=None,
         seq_len=4092, batch_size=4),
    dict(name="LoRA r=64, all 32 layers, 1 x 4092 tokens", lora_r=64, keep_every=None,
         seq_len=4092, batch_size=1),
    dict(name="LoRA r=16, keep every 2nd layer (16), 1 x 2046 tokens", lora_r=16, keep_every=2,
         seq_len=2046, batch_size=1),
    dict(name="LoRA r=16, keep every 4th layer (8), 1 x 2046 tokens", lora_r=16, keep_every=4,
         seq_len=2046, batch_size=1),
)


def recipe_flags(recipe: dict) -> str:
    """The ``train`` command-line flags of a recipe."""
    flags = f"--lora-r {recipe['lora_r']} --seq-len {recipe['seq_len']} " \
        f"--batch-size {recipe['batch_size']}"  # fmt: skip
    return flags + (f" --keep-every {recipe['keep_every']}" if recipe["keep_every"] else "")


def fitting_recipes(total_gb: float, weight_bytes: int = 2, shape: dict = MISTRAL_7B,
                    layout: TokenLayout | None = None) -> list[dict]:  # fmt: skip
    """The `RECIPES` that fit a GPU of ``total_gb``, each with its planned GB."""
    layout = layout or TokenLayout(32000)
    fits = []
    for recipe in RECIPES:
        layers = shape["layers"] // recipe["keep_every"] if recipe["keep_every"] else None
        plan = training_memory(layout, shape, recipe["seq_len"], recipe["batch_size"],
                               recipe["lora_r"], layers, weight_bytes)  # fmt: skip
        if plan["total_GB"] <= total_gb * 0.93:
            fits.append({**recipe, "total_GB": plan["total_GB"]})
    return fits


def recipe_for_gpu(name: str | None = None, total_gb: float | None = None,
                   native_bf16: bool | None = None) -> str:  # fmt: skip
    """What the full profile (Mistral-7B) runs on a GPU: chat, and the best training recipe
    that fits, as lines to print. Defaults: this machine's first GPU."""
    if total_gb is None:
        if not torch.cuda.is_available():
            return ("No GPU here: the full profile (Mistral-7B) needs one; the tiny profile "
                    "runs every notebook on this CPU.")  # fmt: skip
        props = torch.cuda.get_device_properties(0)
        name, total_gb = props.name, props.total_memory / 1e9
        from .config import native_bf16 as _native

        native_bf16 = _native("cuda")
    dtype = "bf16" if native_bf16 else "fp16 (no native bf16 here)"
    lines = [f"GPU: {name or 'a GPU'}, {total_gb:.0f} GB; 7B runs in {dtype}."]
    chat = inference_memory()
    chat_fits = chat["total_GB"] <= total_gb * 0.93
    if chat_fits:
        lines.append(f"Chat (notebook 06): fits ({chat['total_GB']} GB: weights "
                     f"{chat['weights_GB']} GB + KV cache {chat['kv_cache_GB']} GB).")
    fits = fitting_recipes(total_gb)
    if not fits:
        smallest = min(r["total_GB"] for r in fitting_recipes(1e9))
        lines.append(f"Training 7B: no recipe fits; the smallest (LoRA on 8 of 32 layers) "
                     f"needs about {smallest} GB.")
        return "\n".join(lines)
    best = fits[0]
    if not chat_fits:
        kept = dict(MISTRAL_7B, layers=MISTRAL_7B["layers"] // (best["keep_every"] or 1))
        pruned = inference_memory(kept)
        lines.append(f"Chat (notebook 06): the whole 7B needs {chat['total_GB']} GB and does "
                     f"not fit; the {kept['layers']}-layer model trained below chats in "
                     f"{pruned['total_GB']} GB.")
    lines.append(f"Training (notebook 05): {best['name']} ({best['total_GB']} GB planned): "
                 f"`train {recipe_flags(best)}`.")
    if best["keep_every"]:
        lines.append("  Pruning drops layers, and with them some of what the base model knows: "
                     "fine for learning the pipeline, weaker than 7B LoRA on 40-80 GB.")
    if not native_bf16:
        lines.append("  Without native bf16 the base runs in fp16 with loss scaling, at about "
                     "a tenth of an A100's speed.")
    return "\n".join(lines)


RECIPE_FIELDS = ("lora_r", "keep_every", "keep_layers", "seq_len", "batch_size", "grad_accum")


def recipe_config(cfg: TrainConfig, models: ModelsConfig | None = None,
                  device: str | None = None, run_dir: str | Path | None = None,
                  layout: TokenLayout | None = None) -> TrainConfig:  # fmt: skip
    """``cfg``, or on a GPU too small for it the best `RECIPES` entry that fits (LoRA rank,
    pruning, window and batch; accumulation raised to keep the tokens per step), so notebook 05
    runs unedited on a T4 as on an A100; its window cut to whole groups of ``layout`` (default
    the mono one; notebook 08 passes the duplex one). A ``run_dir`` that already holds a run
    keeps the recipe it recorded (a resume must rebuild the same model). Unchanged off CUDA
    and in the tiny profile."""
    recorded = Path(run_dir) / "run.json" if run_dir else None
    if recorded is not None and recorded.exists():
        recipe = json.loads(recorded.read_text()).get("recipe")
        if recipe:
            recipe["keep_layers"] = tuple(recipe["keep_layers"]) if recipe["keep_layers"] \
                else None  # fmt: skip
            changed = {k: v for k, v in recipe.items() if getattr(cfg, k) != v}
            if changed:
                print(f"{run_dir} holds a run: keeping its recipe {changed}")
            return cfg.replace(**recipe)
    device = device or (f"cuda:{distributed_env()[2]}" if pick_device() == "cuda" else "cpu")
    if cfg.profile == "tiny" or not device.startswith("cuda"):
        return cfg
    from .checkpoints import lm_config

    shape = lm_shape(lm_config(models)) if models is not None else MISTRAL_7B
    layout = layout or TokenLayout(32000)
    nbytes = pick_dtype(device).itemsize
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory / 1e9
    layers = shape["layers"] // (cfg.keep_every or 1)
    own = training_memory(layout, shape, cfg.seq_len, cfg.batch_size, cfg.lora_r, layers, nbytes,
                          cfg.grad_checkpointing)  # fmt: skip
    if own["total_GB"] <= total * 0.93:
        return cfg
    fits = fitting_recipes(total, nbytes, shape, layout)
    if not fits:
        raise DoesNotFitError(f"no training recipe fits {total:.0f} GB (see recipe_for_gpu)")
    best = fits[0]
    seq_len = best["seq_len"] // layout.group_len * layout.group_len  # whole groups
    tokens = cfg.seq_len * cfg.batch_size * cfg.grad_accum
    accum = max(1, round(tokens / (seq_len * best["batch_size"])))
    print(f"{total:.0f} GB GPU: the default recipe needs ~{own['total_GB']} GB; using "
          f"{best['name']} ({best['total_GB']} GB planned), gradient accumulation {accum}")
    return cfg.replace(lora_r=best["lora_r"], keep_every=best["keep_every"],
                       seq_len=seq_len, batch_size=best["batch_size"], grad_accum=accum)


MIN_STEPS = 100  # a schedule sized to the data has at least this many steps when it can


def schedule_for_data(cfg: TrainConfig, windows: int, world: int = 1) -> TrainConfig:
    """``cfg`` with ``max_steps`` for ``cfg.epochs`` passes over ``windows`` training windows,
    accumulation lowered (not below 1) so a small data set still gets `MIN_STEPS` steps, and
    warmup, evaluation and checkpoints scaled to the run (at most a tenth of it each)."""
    per_window = cfg.epochs * windows / (cfg.batch_size * world)
    accum = max(1, min(cfg.grad_accum, int(per_window // MIN_STEPS)))
    steps = max(1, math.ceil(per_window / accum))
    tenth = max(1, steps // 10)
    return cfg.replace(max_steps=steps, grad_accum=accum,
                       warmup_steps=min(cfg.warmup_steps, tenth),
                       eval_every=min(cfg.eval_every, tenth),
                       save_every=min(cfg.save_every, tenth),
                       sample_every=min(cfg.sample_every, steps) if cfg.sample_every else 0)


def release_memory() -> None:
    """Free what a dropped model held (Python's cycles, then CUDA's cache): call before loading
    again in a notebook, e.g. on re-running a training cell."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class DoesNotFitError(RuntimeError):
    """The training recipe needs more GPU memory than the device has."""


def check_memory(plan: dict, device: str, what: str = "this recipe",
                 advice: str | None = None) -> None:  # fmt: skip
    """Raise `DoesNotFitError` naming what fits (``advice``, default: the training recipes
    that fit) when ``plan['total_GB']`` exceeds the free memory of CUDA ``device`` (no-op
    elsewhere)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return
    free, total = (x / 1e9 for x in torch.cuda.mem_get_info(torch.device(device)))
    if plan["total_GB"] <= free:
        return
    if advice is None:
        fits = fitting_recipes(total)
        hint = "; ".join(f"{r['name']}: `{recipe_flags(r)}`" for r in fits[:2]) or \
            "no 7B recipe fits this GPU"  # fmt: skip
        advice = (f"What fits: {hint}. A smaller --seq-len or --batch-size (with more "
                  "accumulation) or --keep-every also cut memory; pass --no-memory-check to "
                  "try anyway.")  # fmt: skip
    raise DoesNotFitError(
        f"{what} needs about {plan['total_GB']} GB of GPU memory ({plan}), but {device} has "
        f"{free:.1f} of {total:.1f} GB free (a model still loaded in this kernel? "
        f"train.release_memory() after dropping it). {advice}")  # fmt: skip


def throughput_plan(lora_r: int = 64, mfu: float = 0.4, shape: dict = MISTRAL_7B,
                    tokens_per_s_audio: float = 55.0) -> list[dict]:  # fmt: skip
    """Expected training tokens/s for 7B with LoRA and gradient checkpointing, from FLOPs: a
    forward (2N), the recompute (2N) and the input-gradient half of backward (2N), so ~6N
    FLOPs per token, at ``mfu`` of each GPU's dense bf16 peak."""
    n = mistral_params(vocab=40256, **shape)["layers"]
    flops_per_token = 6 * n
    rows = []
    for gpu, tflops in GPU_BF16_TFLOPS.items():
        tokens_s = tflops * 1e12 * mfu / flops_per_token
        rows.append({"gpu": gpu, "tokens_per_s": round(tokens_s),
                     "audio_h_per_h": round(tokens_s / tokens_per_s_audio, 1),
                     "hours_per_1000h_audio": round(1000 * tokens_per_s_audio * 3600 /
                                                    tokens_s / 3600, 1)})  # fmt: skip
    return rows


# Three ways to train the same model, for notebook 05's experiment (`compare_recipes`).
RECIPE_EXPERIMENT = {
    "full finetune": dict(lora_r=None, keep_every=None),
    "LoRA r=8 + new rows": dict(lora_r=8, keep_every=None),
    "half the layers, full finetune": dict(lora_r=None, keep_every=2),
}


def compare_recipes(cfg: TrainConfig, models: ModelsConfig, tokens_root: str | Path,
                    runs_root: str | Path, steps: int = 30,
                    recipes: dict | None = None) -> list[dict]:  # fmt: skip
    """Train the same model once per recipe (``recipes``: name -> TrainConfig fields, default
    `RECIPE_EXPERIMENT`) for ``steps`` steps on the same batches, each in its own run under
    ``runs_root`` (resumable: a finished run is read back, not trained again). Per recipe: the
    trainable and total parameters, layers, seconds per step and the training loss curve."""
    rows = []
    for name, fields in (recipes or RECIPE_EXPERIMENT).items():
        run_dir = Path(runs_root) / name.replace(" ", "-").replace("=", "").replace("+", "and")
        c = cfg.replace(max_steps=steps, eval_every=steps, save_every=steps, sample_every=0,
                        wandb_mode="disabled", epochs=None, **fields)  # fmt: skip
        trainer = Trainer(c, models, tokens_root, run_dir)
        trainer.fit(resume=True, progress=False)
        metrics = [m for m in read_metrics(run_dir) if "loss" in m]
        tokens_per_step = c.batch_size * c.grad_accum * trainer.splits.train.seq_len
        step_s = [tokens_per_step / m["tokens_per_s"] for m in metrics[1:]]  # after warm-up
        rows.append({"recipe": name, **trainer.params,
                     "layers": core_model(trainer.lm).config.num_hidden_layers,
                     "step_s": float(np.median(step_s)) if step_s else float("nan"),
                     "steps": [m["step"] for m in metrics],
                     "losses": [m["loss"] for m in metrics]})  # fmt: skip
        del trainer
        release_memory()
    return rows


def notebook_run_dir(cfg) -> Path:
    """The run notebooks 05 and 06 share: ``runs/tiny-demo`` (tiny) or ``runs/mistral-7b-lora``
    under the profile's data directory."""
    return Path(cfg.data_dir) / "runs" / ("tiny-demo" if cfg.profile == "tiny" else
                                          "mistral-7b-lora")  # fmt: skip


def ensure_run(cfg: TrainConfig, models: ModelsConfig, run_dir: str | Path,
               progress: bool = False) -> Path:  # fmt: skip
    """``run_dir``, trained here first (tiny profile only) if it has no model yet, so the chat
    notebook runs on its own."""
    from .config import TokenizeConfig
    from .preprocess import ensure_tokens

    run_dir = Path(run_dir)
    if (run_dir / "final" / "weights.pt").exists() or latest_checkpoint(run_dir):
        return run_dir  # a checkpoint will do: a long run can be tried while it trains
    if cfg.profile != "tiny":
        raise FileNotFoundError(f"{run_dir} has no trained model: run notebook 05 first")
    tokens = ensure_tokens(TokenizeConfig.from_profile("tiny", data_dir=cfg.data_dir), models)
    Trainer(cfg.replace(wandb_mode="disabled"), models, tokens, run_dir).fit(
        resume=True, progress=progress)
    return run_dir


def training_records(run_dir: str | Path, tokens_root: str | Path) -> list[dict]:
    """The pieces a run trained on, in stream order (the first ones when it trained on
    ``train_chunks`` only): prompts from them show what the model memorised."""
    from .preprocess import stream_pieces

    meta = json.loads((Path(run_dir) / "run.json").read_text())
    val = set(meta["val_videos"])
    records = [r for r in stream_pieces(tokens_root) if r["video_id"] not in val]
    return records[: meta["train_chunks"]] if meta.get("train_chunks") else records
