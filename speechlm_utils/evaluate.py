"""Stage 07: did the finetune learn speech? Numbers comparable with published ones.

A run is judged on every saved checkpoint by:

- **held-out loss per kind** (text, pad, semantic, acoustic) on its validation videos, and the
  perplexity of each;
- **likelihood suites** (sWUGGY, sBLIMP, sStoryCloze, tStoryCloze, SALMon, or the offline demo
  suite): each item holds two or more clips, one right. Every clip is tokenized into our stream
  exactly as the training audio was (Mimi codes, the words in the text slots from the run's
  text source, or every text slot ``TEXT_PAD`` for the *speech-only* variant, as SpiritLM
  reports both) and scored by the mean log-likelihood of its audio tokens, over the semantic
  codebook alone and over all codebooks. The item counts as right when the right clip scores
  highest. A likelihood pair needs no judge and no generation: a model that learned the
  language gives a real word, a grammatical sentence or a coherent ending a higher probability
  than a matched wrong one, and chance is 1 / (clips per item);
- a **sanity suite** that even the tiny model must pass: a memorised training window against
  the same window with its audio frames shuffled, and with another window's audio under its
  text;
- **text-speech consistency**: Whisper's transcript of generated audio against the model's own
  text channel (word error rate), from validation prompts.

Results: ``RUN/eval.jsonl``, one line per checkpoint, suite and metric; each item's scores in
``RUN/eval/<checkpoint>/<suite>.jsonl`` (appended per part, so a stopped evaluation resumes
where it was; each line keyed by the checkpoint's weights and the suite's source, so a rewritten
checkpoint or another source is scored again); the suites' token streams in
``RUN/eval/encoded/<suite>/`` (encoded once, scored for every checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .manifest import JsonlWriter, read_jsonl, write_json_atomic
from .tokenizer import TEXT_KIND, SpeechTokenizer, TokenLayout
from .train import LOSS_KINDS
from .words import Word

VARIANTS = ("text", "speech")  # text slots as in training, or all TEXT_PAD (speech only)
SPANS = ("semantic", "all")  # codebook 0 alone, or every codebook
MIN_SCORE_GAP = 1e-6  # a right clip must beat every other by this (ties count as wrong)
SANITY_ITEMS = 8  # memorised windows in the sanity suite (the run's first ones)


# -- items ------------------------------------------------------------------------------------


@dataclass
class Clip:
    """One candidate recording: encoded file bytes, a file path, or a waveform with its rate;
    ``words`` when a transcript with times comes with it (the demo suite's), else Whisper's."""

    audio: bytes | str | np.ndarray | RowAudio
    sample_rate_hz: int | None = None  # for a waveform
    words: list[Word] | None = None

    def load(self, sample_rate_hz: int) -> np.ndarray:
        from .audio import decode_audio_bytes, load_audio

        if isinstance(self.audio, RowAudio):  # read from the data set only now
            return _audio_of(self.audio.cell()).load(sample_rate_hz)
        if isinstance(self.audio, bytes):
            return decode_audio_bytes(self.audio, sample_rate_hz)
        if isinstance(self.audio, str):
            return load_audio(self.audio, sample_rate_hz)
        wav = np.asarray(self.audio, dtype=np.float32)
        if self.sample_rate_hz != sample_rate_hz:
            raise ValueError(f"a waveform at {self.sample_rate_hz} Hz where {sample_rate_hz} Hz "
                             "is needed: give the clip as file bytes to resample it")  # fmt: skip
        return wav


@dataclass
class RowAudio:
    """An audio cell left in its data set (memory-mapped on disk) until a clip is decoded, so
    a suite of 50 000 clips never sits in memory."""

    data: object  # a `datasets.Dataset`
    row: int
    column: str

    def cell(self):
        return self.data[self.row][self.column]


@dataclass
class Item:
    """One likelihood test: ``clips[correct]`` is the right one."""

    id: str
    clips: list[Clip]
    correct: int = 0
    subset: str = ""  # e.g. SALMon's task


# -- suites: one adapter per Hugging Face schema -----------------------------------------------


def _audio_of(cell) -> Clip:
    """A `datasets` audio cell read with ``Audio(decode=False)``: ``{"bytes", "path"}``."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return Clip(bytes(cell["bytes"]))
        if cell.get("path"):
            return Clip(str(cell["path"]))
        if cell.get("array") is not None:
            return Clip(np.asarray(cell["array"], np.float32), int(cell["sampling_rate"]))
    if isinstance(cell, str):
        return Clip(cell)
    raise ValueError(f"not an audio cell: {type(cell).__name__}")


def _words_cell(cell) -> list[Word] | None:
    """An optional column of timed words (JSON list of {word, start_s, end_s})."""
    if not cell:
        return None
    rows = json.loads(cell) if isinstance(cell, str) else cell
    return [Word(" " + w["word"].strip(), float(w["start_s"]), float(w["end_s"])) for w in rows]


def pair_adapter(right: str, wrong: str | tuple[str, ...], words: str | None = None):
    """An adapter for a schema with one column per candidate: ``right`` and ``wrong``
    audio columns (and, optionally, ``<column>_words`` transcripts with times)."""
    wrongs = (wrong,) if isinstance(wrong, str) else tuple(wrong)

    def adapt(row: dict, index: int, subset: str, audio: Callable[[str], object]) -> Item:
        """``row``: the columns other than audio; ``audio(column)``: that column's cell."""
        clips = [Clip(audio(col), words=_words_cell(row.get(f"{col}_words")))
                 for col in (right, *wrongs)]  # fmt: skip
        subset = subset or str(row.get("subset") or "")
        key = str(row.get("id", row.get("ind", index)))
        return Item(f"{subset}/{key}" if subset and subset not in key else key, clips, 0, subset)

    return adapt


@dataclass
class Suite:
    """Where a suite lives on the Hugging Face hub and how its rows become `Item`s."""

    name: str
    hub_id: str
    adapter: Callable[..., Item]  # (row without audio, index, subset, audio(column)) -> Item
    subsets: tuple[str | None, ...] = (None,)  # the dataset's configs (SALMon: one per task)
    split: str = "train"
    audio_columns: tuple[str, ...] = ()
    about: str = ""
    chance: float = 0.5


SALMON_TASKS = ("bg_alignment", "bg_all_consistency", "bg_domain_consistency",
                "gender_consistency", "rir_consistency", "sentiment_alignment",
                "sentiment_consistency", "speaker_consistency")  # fmt: skip

# The hub copies Llama-Mimi's evaluation reads (github.com/llm-jp/llama-mimi, eval/): sLM21's
# sWUGGY and sBLIMP and the two StoryClozes under `speed/`, SALMon from its authors (slprl), one
# config per task, 200 items each. Each row holds the right clip and the wrong one.
SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite("swuggy", "speed/sWUGGY", pair_adapter("positive", "negative"),
              audio_columns=("positive", "negative"),
              about="lexicon: a spoken word scores above a matched non-word"),
        Suite("sblimp", "speed/sBLIMP", pair_adapter("positive", "negative"),
              audio_columns=("positive", "negative"),
              about="syntax: a grammatical sentence above its minimal ungrammatical twin"),
        Suite("sstorycloze", "speed/sStoryCloze", pair_adapter("positive", "negative"),
              audio_columns=("positive", "negative"),
              about="semantics: a story's right ending above a fine-grained wrong one"),
        Suite("tstorycloze", "speed/tStoryCloze", pair_adapter("positive", "negative"),
              audio_columns=("positive", "negative"),
              about="semantics: the right ending above a random, topically wrong one"),
        Suite("salmon", "slprl/SALMon", pair_adapter("positive_audio", "negative_audio"),
              SALMON_TASKS, audio_columns=("positive_audio", "negative_audio"),
              about="acoustics: consistent speaker, sentiment, background, room"),
        Suite("demo", "data/eval/demo_suite", pair_adapter("positive", "negative"),
              audio_columns=("positive", "negative"),
              about="offline: the demo voices saying right and wrong words, grammar, endings"),
    ]
}


def demo_suite_dir() -> Path:
    from .config import find_repo_root

    root = find_repo_root()
    if root is None:
        raise FileNotFoundError("the demo suite ships in the repository's data/eval/")
    return root / "data" / "eval" / "demo_suite"


def load_suite(name: str, source: str | Path | None = None, limit: int | None = None) -> list[Item]:
    """The items of suite ``name`` (`SUITES`), read with `datasets` from ``source``: a local
    directory (``save_to_disk``, or parquet files in the hub's layout) or, by default, the
    suite's hub id (the demo suite: its directory in the repository). Audio is kept as the
    files' bytes and decoded by ffmpeg as training audio was."""
    import datasets

    suite = SUITES[name]
    source = source or (demo_suite_dir() if name == "demo" else suite.hub_id)
    items: list[Item] = []
    for subset in suite.subsets:
        data = _open_dataset(source, subset, suite.split)
        for col in suite.audio_columns:
            data = data.cast_column(col, datasets.Audio(decode=False))
        light = data.remove_columns([c for c in suite.audio_columns if c in data.column_names])
        mine = [suite.adapter(row, index, subset or "",
                              lambda col, i=index, d=data: RowAudio(d, i, col))
                for index, row in enumerate(light)]  # the audio stays on disk until decoded
        seen = Counter(it.id for it in mine)  # over every row, so a limit keeps the same ids
        for index, it in enumerate(mine):  # e.g. one sentence pair's id in several voices
            if seen[it.id] > 1:
                it.id = f"{it.id}@{index}"
        items += mine[:limit] if limit else mine
    return items


def _open_dataset(source: str | Path, subset: str | None, split: str):
    import datasets

    if datasets.is_progress_bar_enabled():  # a one-time cache build, not worth a bar
        datasets.disable_progress_bars()
        try:
            return _open_dataset(source, subset, split)
        finally:
            datasets.enable_progress_bars()
    path = Path(source)
    if path.is_dir():
        here = path / subset if subset and (path / subset).is_dir() else path
        if (here / "dataset_info.json").exists() or (here / "dataset_dict.json").exists():
            data = datasets.load_from_disk(str(here))
            return data[split] if isinstance(data, datasets.DatasetDict) else data
        files = sorted(str(p) for p in here.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{here}: no dataset (save_to_disk or parquet files)")
        return datasets.load_dataset("parquet", data_files=files, split="train")
    return datasets.load_dataset(str(source), subset, split=split)


# -- encoding clips into the stream ---------------------------------------------------------------


def speech_only(ids: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """``ids`` with every text slot ``TEXT_PAD``: the speech-only variant of a clip."""
    out = np.array(ids, copy=True)
    out[layout.kinds(out.size) == TEXT_KIND] = layout.text_pad_id
    return out


def encode_clips(clips: list[Clip], codec, tokenizer: SpeechTokenizer, aligner=None,
                 batch_size: int = 16, errors: dict[int, str] | None = None,
                 ) -> list[np.ndarray]:  # fmt: skip
    """Token ids of each clip, as stage 03 makes them: audio padded to whole groups and Mimi
    encoded (one batched pass; Mimi is causal, so the padding after a clip never changes its
    codes), words in the text slots: the clip's own transcript, else ``aligner``'s (Whisper),
    else none. Each clip's ids end with its last frame of real audio: the silence that pads it
    to a whole group is not part of the clip, and scoring it would favour the clip with more
    padding. ``[N_i]`` int64 each. A duplex layout's clip is the assistant speaking while the
    user is silent (the user's codes are Mimi's codes of silence).

    ``errors``: where given, a clip whose audio cannot be read (corrupt, empty, not finite) gets
    empty ids and ``errors[i]`` its reason instead of stopping every other clip."""
    from .audio import MIMI_SAMPLE_RATE_HZ, WHISPER_SAMPLE_RATE_HZ

    lay = tokenizer.layout
    group = lay.frames_per_group * codec.frame_samples
    out: list[np.ndarray] = []
    silent = None  # duplex: Mimi's codes of silence, a prefix of any longer silence's (causal)
    for start in range(0, len(clips), batch_size):
        part = clips[start : start + batch_size]
        wavs: dict[int, np.ndarray] = {}
        for i, c in enumerate(part):
            try:
                wav = c.load(MIMI_SAMPLE_RATE_HZ)
                if wav.size == 0 or not np.isfinite(wav).all():
                    raise ValueError("no audio samples" if wav.size == 0 else
                                     "audio samples that are not finite")  # fmt: skip
            except Exception as err:  # one bad file must not stop a suite of thousands
                if errors is None:
                    raise
                errors[start + i] = f"{type(err).__name__}: {err}"[:300]
                continue
            wavs[i] = wav
        ids: dict[int, np.ndarray] = {}
        if wavs:
            keys = sorted(wavs)
            lengths = [max(group, math.ceil(wavs[i].size / group) * group) for i in keys]
            batch = torch.zeros(len(keys), 1, max(lengths))
            for row, i in enumerate(keys):
                batch[row, 0, : wavs[i].size] = torch.from_numpy(wavs[i])
            codes = codec.encode(batch, lengths)
            if lay.duplex and (silent is None or silent.shape[1] * codec.frame_samples <
                               max(lengths)):  # fmt: skip
                silent = codec.encode(torch.zeros(1, 1, max(lengths)))[0][: lay.user_codebooks]
            words = {i: part[i].words for i in keys}
            missing = [i for i in keys if words[i] is None]
            if missing and aligner is not None:
                heard = aligner.align([part[i].load(WHISPER_SAMPLE_RATE_HZ) for i in missing])
                words.update(zip(missing, heard))
            for i, c in zip(keys, codes):
                frames = math.ceil(wavs[i].size / codec.frame_samples)
                user = None if silent is None else silent[:, : c.shape[1]].numpy()
                ids[i] = tokenizer.encode(c.numpy(), words[i] or [], user_codes=user).ids[
                    : audio_end(lay, frames)]
        out += [ids.get(i, np.zeros(0, np.int64)) for i in range(len(part))]
    return out


def audio_end(layout: TokenLayout, frames: int) -> int:
    """The stream length that ends with frame ``frames - 1``'s last codebook."""
    group, frame = divmod(frames - 1, layout.frames_per_group)
    return group * layout.group_len + layout.text_slots_per_group + (frame + 1) * layout.frame_len


class EncodedSuite:
    """A suite's token streams on disk, in blocks of items written atomically (a stopped
    encoding resumes at the first missing block). ``clips[i]`` are item i's clips' ids;
    ``errors``: item id -> why it could not be encoded (`encode_clips`), for every item left
    out. Blocks are counted within each subset (SALMon's tasks), so the first N items of each
    (a ``--limit`` run) lie at the start of the whole suite's blocks: a limited run reads what
    a whole one encoded, and a whole one re-encodes at most the last block of each subset a
    limited one wrote. ``meta.json`` records what the streams depend on (the layout's
    fingerprint, the codec, Whisper and source named by the caller, the store's format): a
    store made otherwise is encoded again rather than scored as if it were this one."""

    FORMAT = 3  # 2: ids end with the last real frame, failed items kept apart; 3: per subset

    def __init__(self, root: Path, block: int = 64):
        self.root, self.block = Path(root), block
        self.errors: dict[str, str] = {}

    def _fresh(self, key: dict) -> None:
        """Remove blocks encoded under another ``key`` (or format), then record ``key``."""
        meta = {"format": self.FORMAT, **key}
        path = self.root / "meta.json"
        if path.exists() and json.loads(path.read_text()) == meta:
            return
        for old in self.root.glob("block-*.npz"):
            old.unlink()
        write_json_atomic(path, meta)

    def _blocks(self, items: list[Item]) -> list[tuple[Path, list[int]]]:
        """Each block's file and its items' indices in ``items``, ``block`` items of one
        subset a block."""
        import re

        by_subset: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_subset.setdefault(it.subset, []).append(i)
        out = []
        for subset, index in by_subset.items():
            tag = re.sub(r"[^\w.-]", "_", subset) + "-" if subset else ""
            for b in range(0, len(index), self.block):
                path = self.root / f"block-{tag}{b // self.block:05d}.npz"
                out.append((path, index[b : b + self.block]))
        return out

    @staticmethod
    def _holds(path: Path, ids: list[str]) -> bool:
        """Whether the block at ``path`` starts with the items ``ids``."""
        if not path.exists():
            return False
        with np.load(path) as z:
            return list(z["item_ids"][: len(ids)]) == ids

    def build(self, items: list[Item], codec, tokenizer, aligner=None, progress: bool = True,
              key: dict | None = None) -> list[list[np.ndarray]]:  # fmt: skip
        """Encode what is missing (or was made for other items, or under another ``key``),
        then `load`. ``key``: what else the streams depend on, e.g. the Mimi and Whisper ids."""
        from tqdm.auto import tqdm

        self.root.mkdir(parents=True, exist_ok=True)
        self._fresh({"layout": tokenizer.fingerprint(), **(key or {})})
        todo = [(path, index) for path, index in self._blocks(items)
                if not self._holds(path, [items[i].id for i in index])]  # fmt: skip
        for path, index in tqdm(todo, desc=f"encode {self.root.name}",
                                disable=not progress or not todo):  # fmt: skip
            part = [items[i] for i in index]
            clips = [c for it in part for c in it.clips]
            failed: dict[int, str] = {}
            ids = encode_clips(clips, codec, tokenizer, aligner, errors=failed)
            counts = [len(it.clips) for it in part]
            reasons, at = [], 0
            for n in counts:
                bad = [f"clip {k}: {failed[at + k]}" for k in range(n) if at + k in failed]
                reasons.append("; ".join(bad))
                at += n
            tmp = path.with_name(".tmp-" + path.name)
            with tmp.open("wb") as f:
                np.savez(f, ids=np.concatenate(ids), lengths=[len(x) for x in ids],
                         counts=counts, item_ids=np.array([it.id for it in part]),
                         errors=np.array(reasons))  # fmt: skip
            tmp.replace(path)
        return self.load(items)

    def load(self, items: list[Item]) -> list[list[np.ndarray]]:
        out: list = [None] * len(items)
        self.errors = {}
        for path, index in self._blocks(items):
            ids = [items[i].id for i in index]
            with np.load(path) as z:
                if list(z["item_ids"][: len(ids)]) != ids:
                    raise ValueError(f"{self.root} holds other items than this suite's: "
                                     "remove it to encode the suite again")  # fmt: skip
                flat = np.split(z["ids"], np.cumsum(z["lengths"])[:-1])
                at = 0
                for i, item_id, c, why in zip(index, ids, z["counts"], z["errors"]):
                    out[i] = flat[at : at + c]
                    at += c
                    if why:
                        self.errors[item_id] = str(why)
        return out


# -- scoring --------------------------------------------------------------------------------------


def audio_logprobs(core, weight: torch.Tensor, layout: TokenLayout,
                    ids: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``logp[B, L-1]``: the log-probability of each next token of ``ids[B, L]`` (starting at a
    group boundary) over the ids its position allows; NaN where the target is a text slot."""
    hidden = core(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    kinds = layout.kinds(ids.shape[1])[1:]
    targets = ids[:, 1:]
    out = torch.full(targets.shape, float("nan"), device=ids.device)
    for kind in range(1, layout.num_codebooks + 1):
        cols = torch.from_numpy(np.flatnonzero(kinds == kind)).to(ids.device)
        if cols.numel() == 0:
            continue
        lo, hi = layout.id_range(kind)
        logits = (hidden[:, cols] @ weight[lo:hi].T.to(hidden.dtype)).float()
        tgt = (targets[:, cols] - lo).clamp(0, hi - lo - 1)
        out[:, cols] = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return out


@torch.no_grad()
def token_logprobs(model, layout: TokenLayout, ids) -> np.ndarray:
    """One clip's ``[N]`` log-probability per audio token (NaN at text slots and position 0)."""
    from .model import core_model, output_weight

    device = next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device)[None]
    logp = audio_logprobs(core_model(model), output_weight(model), layout, ids)[0]
    return np.concatenate([[np.nan], logp.cpu().numpy()])


@torch.no_grad()
def clip_logprobs(model, layout: TokenLayout, clips: list[np.ndarray],
                  max_batch_tokens: int = 8192, progress: bool = False) -> np.ndarray:  # fmt: skip
    """Summed log-likelihood of each clip's audio tokens under ``model``, each target's
    softmax over the ids its position allows (as in training and generation).

    ``clips``: token ids, each starting at a group boundary (`audio_logprobs`). Clips are
    sorted by length and batched up to ``max_batch_tokens``, right-padded: attention is
    causal, so the padding after a clip never reaches its positions, and no clip's score
    depends on its batch-mates (up to float rounding). A batch the GPU has no memory for is
    halved, and so is the budget for the batches after it. Returns ``[N, 4]`` float64:
    semantic sum, semantic count, all-codebook sum, all-codebook count.
    """
    from tqdm.auto import tqdm

    from .model import core_model, output_weight

    device = next(model.parameters()).device
    core, weight = core_model(model), output_weight(model)
    out = np.zeros((len(clips), 4))
    order = sorted(range(len(clips)), key=lambda i: -len(clips[i]))
    budget, at = max_batch_tokens, 0
    bar = tqdm(total=len(clips), desc="score", disable=not progress, leave=False)
    while at < len(order):
        length = max(1, len(clips[order[at]]))
        batch = order[at : at + max(1, budget // length)]
        ids = torch.full((len(batch), length), layout.text_pad_id, dtype=torch.long)
        valid = torch.zeros(len(batch), length, dtype=torch.bool)
        for row, i in enumerate(batch):
            ids[row, : len(clips[i])] = torch.as_tensor(clips[i])
            valid[row, : len(clips[i])] = True
        try:
            logp = audio_logprobs(core, weight, layout, ids.to(device)).double().cpu()
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            budget = len(batch) // 2 * length  # this batch again in halves, and all after it
            del ids, valid
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        scored = valid[:, 1:] & ~logp.isnan()
        logp = torch.where(scored, logp, 0.0)
        semantic = torch.from_numpy(layout.kinds(length)[1:] == 1) & scored
        out[batch] = torch.stack([(logp * semantic).sum(-1), semantic.sum(-1),
                                  logp.sum(-1), scored.sum(-1)], -1).numpy()  # fmt: skip
        at += len(batch)
        bar.update(len(batch))
    bar.close()
    return out


def right_wins(means, correct: int) -> bool:
    """Whether the right clip's mean beats every other's by `MIN_SCORE_GAP` (a tie is wrong):
    the one rule of `item_verdicts` and `explain_item`."""
    means = np.asarray(means, dtype=np.float64)
    return bool((means[correct] - np.delete(means, correct) > MIN_SCORE_GAP).all())


def item_verdicts(scores: np.ndarray, correct: int) -> dict:
    """From one item's ``[clips, 4]`` `clip_logprobs`: the mean log-likelihood per clip over
    each span, and whether the right clip beat every other (`right_wins`)."""
    out = {}
    for span, (s, n) in zip(SPANS, ((0, 1), (2, 3))):
        means = scores[:, s] / np.maximum(scores[:, n], 1)
        out[span] = {"means": [float(m) for m in means], "right": right_wins(means, correct)}
    return out


def score_items(model, layout: TokenLayout, encoded: list[list[np.ndarray]], items: list[Item],
                out_path: Path, variants: Iterable[str] = VARIANTS, max_batch_tokens: int = 8192,
                forwards_per_write: int = 8, progress: bool = True,
                errors: dict[str, str] | None = None, key: dict | None = None,
                ) -> list[dict]:  # fmt: skip
    """Score every item (each variant), appending one line per item to ``out_path``; items
    already there (under the same ``key``) are read back, not scored again. Returns every
    item's line. Items are taken in parts of about ``forwards_per_write`` full forwards of
    ``max_batch_tokens`` (so short clips fill the budget as long ones do), and a part's lines
    are written when it is scored: a stop loses at most one part. ``errors``: item id -> why
    it has no clips to score (`EncodedSuite.errors`): its line records the reason instead of
    scores, and `accuracies` leaves it out. ``key``: what the scores depend on beyond the item
    (the checkpoint's weights, the suite's source), stored in each line: a line scored under
    another key is scored again."""
    from tqdm.auto import tqdm

    errors = errors or {}
    variants = tuple(variants)
    stamp = {"key": key} if key is not None else {}
    done = {r["id"]: r for r in read_jsonl(out_path) if r.get("key") == key}
    todo = [k for k, it in enumerate(items) if it.id not in done]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"score {out_path.stem}",
               disable=not progress)  # fmt: skip
    with JsonlWriter(out_path) as writer:
        for k in [k for k in todo if items[k].id in errors]:
            line = {"id": items[k].id, "subset": items[k].subset, "error": errors[items[k].id],
                    **stamp}  # fmt: skip
            writer.write(line)
            done[items[k].id] = line
            bar.update(1)
        todo = [k for k in todo if items[k].id not in errors]
        parts, part, size = [], [], 0
        for k in todo:  # each part about forwards_per_write budgets of tokens
            part.append(k)
            size += sum(len(c) for c in encoded[k])
            if size >= forwards_per_write * max_batch_tokens:
                parts.append(part)
                part, size = [], 0
        parts += [part] if part else []
        for part in parts:
            lines = {k: {"id": items[k].id, "subset": items[k].subset, **stamp} for k in part}
            for variant in variants:
                clips = [c if variant == "text" else speech_only(c, layout)
                         for k in part for c in encoded[k]]  # fmt: skip
                scores = clip_logprobs(model, layout, clips, max_batch_tokens)
                at = 0
                for k in part:
                    n = len(encoded[k])
                    lines[k][variant] = item_verdicts(scores[at : at + n], items[k].correct)
                    at += n
            for k in part:
                writer.write(lines[k])
                done[items[k].id] = lines[k]
            bar.update(len(part))
    bar.close()
    return [done[it.id] for it in items]


def chance_level(lines: list[dict]) -> float:
    """The accuracy of a blind guess over ``lines``: the mean of 1 / clips per item."""
    sizes = [len(next(r[v] for v in VARIANTS if v in r)["semantic"]["means"])
             for r in lines if "error" not in r]  # fmt: skip
    return float(np.mean([1 / n for n in sizes])) if sizes else float("nan")


def accuracies(lines: list[dict]) -> dict[str, float]:
    """``acc_<variant>_<span>`` over ``lines`` (`score_items`), plus per subset when there are
    several (SALMon's tasks): ``acc_<variant>_<span>/<subset>``."""
    out = {}
    lines = [r for r in lines if "error" not in r]  # items that could not be read: not scored
    subsets = sorted({r.get("subset", "") for r in lines})
    for variant in VARIANTS:
        for span in SPANS:
            key = f"acc_{variant}_{span}"
            have = [r for r in lines if variant in r]
            if not have:
                continue
            out[key] = float(np.mean([r[variant][span]["right"] for r in have]))
            if len(subsets) > 1:
                for sub in subsets:
                    mine = [r[variant][span]["right"] for r in have if r.get("subset") == sub]
                    out[f"{key}/{sub}"] = float(np.mean(mine))
    return out


# -- the run's own data: held-out loss and the sanity suite ---------------------------------------


def run_meta(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def run_windows(run_dir: str | Path, tokens_root: str | Path, layout: TokenLayout,
                which: str, limit: int | None = None) -> list[np.ndarray]:  # fmt: skip
    """The run's windows of its recipe's ``seq_len``: ``val`` (its held-out videos) or
    ``memorised`` (what it trained on when it used ``train_chunks``, else its training videos);
    ``limit``: the first ones only, read from the first videos alone (the sanity suite needs
    8 windows, not 1000 hours). ``[seq_len]`` int64 each, padding (a stream's short tail) cut
    off. A token root with no manifest raises (e.g. a run whose tokens moved)."""
    from .data import TokenWindows, cut_windows, video_streams
    from .preprocess import stream_pieces
    from .train import training_records

    root = Path(tokens_root)
    if not any(root.glob("manifest*.jsonl")):
        raise FileNotFoundError(f"{root} holds no token manifest (manifest*.jsonl), so the run's "
                                f"{which} windows cannot be read: if its tokens moved (another "
                                "Drive path, another machine), pass --tokens DIR (evaluate_run's "
                                "tokens_root) with the token root it trained on")  # fmt: skip
    meta = run_meta(run_dir)
    seq_len = int(meta.get("recipe", {}).get("seq_len") or 4092) // layout.group_len
    seq_len *= layout.group_len
    if which == "val":
        val = set(meta["val_videos"])
        records = [r for r in stream_pieces(root) if r["video_id"] in val]
    else:
        records = training_records(run_dir, root)
    if limit is not None:  # whole videos, until they hold the windows' tokens (a stream of
        total, last = 0, None  # n tokens makes at least n / seq_len windows, see `cut_windows`)
        for k, r in enumerate(records):
            if total >= limit * seq_len and r["video_id"] != last:
                records = records[:k]
                break
            total, last = total + int(r.get("n_tokens") or seq_len), r["video_id"]
    streams = [s for s in video_streams(records, root) if s[1]]
    if not streams:
        return []
    windows, _ = cut_windows(streams, seq_len)
    data = TokenWindows(windows[:limit], seq_len, layout.text_pad_id)
    out = []
    for i in range(len(data)):  # only these windows' tokens are read (memory maps)
        item = data[i]
        keep = int((item["labels"] != -100).sum())
        out.append(item["input_ids"][:keep].numpy())
    return out


def no_windows(which: str, run_dir: Path, tokens_root: Path, suite: str) -> ValueError:
    """The error for a suite that found none of the run's windows in ``tokens_root``."""
    val = run_meta(run_dir).get("val_videos") or []
    listed = ", ".join(val[:5]) + (f" and {len(val) - 5} more" if len(val) > 5 else "")
    whose = {"val": f"its validation videos ({listed})",
             "memorised": "the videos it trained on"}[which]  # fmt: skip
    return ValueError(f"the {suite} suite has nothing to score: {tokens_root} holds none of "
                      f"{whose} ({run_dir}). Pass --tokens DIR (evaluate_run's tokens_root) "
                      "with the token root the run trained on")  # fmt: skip


@torch.no_grad()
def heldout_loss(model, layout: TokenLayout, windows: list[np.ndarray],
                 batch_size: int = 4, progress: bool = False) -> dict:  # fmt: skip
    """Cross-entropy per kind (`LOSS_KINDS`) over ``windows``, each target's softmax over its
    position's allowed ids (training's loss, unweighted), and its perplexity."""
    from tqdm.auto import tqdm

    from .model import core_model, output_weight
    from .train import weighted_loss

    if not windows:
        raise ValueError("no windows to measure the held-out loss on")
    device = next(model.parameters()).device
    parts = torch.zeros(len(LOSS_KINDS), 2, dtype=torch.float64)
    for start in tqdm(range(0, len(windows), batch_size), desc="held-out loss", leave=False,
                      disable=not progress):  # fmt: skip
        part = windows[start : start + batch_size]
        length = max(len(w) for w in part)
        ids = torch.full((len(part), length), layout.text_pad_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for row, w in enumerate(part):
            ids[row, : len(w)] = labels[row, : len(w)] = torch.as_tensor(w)
        hidden = core_model(model)(input_ids=ids.to(device), use_cache=False).last_hidden_state
        _, p = weighted_loss(hidden, output_weight(model), labels.to(device), layout,
                             (1.0, 1.0, 1.0, 1.0))  # fmt: skip
        parts += p.double().cpu()
    out = {"windows": len(windows)}
    for name, (s, n) in zip(LOSS_KINDS, parts.tolist()):
        if n:
            out[f"loss_{name}"] = s / n
            out[f"ppl_{name}"] = math.exp(min(s / n, 50.0))
    return out


def sanity_items(memorised: list[np.ndarray], others: list[np.ndarray], layout: TokenLayout,
                 count: int = SANITY_ITEMS, seed: int = 0,
                 ) -> tuple[list[Item], list[list[np.ndarray]]]:  # fmt: skip
    """Token-level items from the run's own windows: each of the first ``count`` memorised
    windows (right) against the same window with its audio frames shuffled (its text kept),
    and against another window's audio under its text (``others``: held-out windows, else
    other training ones). Returns the items and their clips' ids, ready for `score_items`."""
    rng = np.random.default_rng(seed)
    lay = layout
    items, encoded = [], []
    pool = others or memorised
    for k, ids in enumerate(memorised[:count]):
        groups = ids.reshape(-1, lay.group_len)
        audio = groups[:, lay.text_slots_per_group :].reshape(-1, lay.frame_len)  # frames
        shuffled = groups.copy()
        shuffled[:, lay.text_slots_per_group :] = \
            audio[rng.permutation(len(audio))].reshape(len(groups), -1)  # fmt: skip
        other = next((w for w in pool[k:] + pool[:k] if w is not ids and len(w) >= len(ids)),
                     None)  # fmt: skip
        clips = [ids, shuffled.reshape(-1)]
        if other is not None:
            swapped = groups.copy()
            swapped[:, lay.text_slots_per_group :] = \
                other[: len(ids)].reshape(-1, lay.group_len)[:, lay.text_slots_per_group :]
            clips.append(swapped.reshape(-1))
        items.append(Item(f"memorised-{k}", [Clip(np.zeros(0))] * len(clips), 0, "memorised"))
        encoded.append(clips)
    return items, encoded


# -- text and speech agree? --------------------------------------------------------------------


def consistency(model, tokenizer: SpeechTokenizer, codec, aligner, prompts: list[np.ndarray],
                prompt_s: float = 4.0, reply_s: float = 4.0, seed: int = 0,
                decode: str = "eager", progress: bool = False) -> dict:  # fmt: skip
    """Does the model say what it writes? For each prompt (a validation window), generate
    ``reply_s`` after its first ``prompt_s`` (sampled, seeded), transcribe the reply's audio
    with Whisper and compare with the model's own text for that span: the words it wrote at
    the reply boundary and in the reply's text slots, less the last ``text_lead_s`` (their
    sound would come after the reply). Returns ``{"wer", "replies"}``: the word error rate over
    all prompts (each reply weighted by its written words) and, per prompt, ``{"written",
    "heard", "wer"}``. No prompts raise: a WER of nothing is no score."""
    from tqdm.auto import tqdm

    from .align import word_error_rate
    from .audio import MIMI_SAMPLE_RATE_HZ, WHISPER_SAMPLE_RATE_HZ, resample
    from .generate import Sampling, lead_groups, respond

    lay = tokenizer.layout
    p = max(1, int(round(prompt_s / lay.group_duration_s))) * lay.group_len
    keep_groups = max(0, int(round(reply_s / lay.group_duration_s))
                      - lead_groups(tokenizer.text_lead_s, lay))  # fmt: skip
    if not prompts:
        raise ValueError("consistency needs at least one prompt (a validation window)")
    rows, errors, words = [], 0.0, 0
    for k, ids in enumerate(tqdm(prompts, desc="consistency", leave=False,
                                 disable=not progress)):  # fmt: skip
        reply = respond(model, tokenizer, codec, np.asarray(ids)[:p], reply_s,
                        Sampling(seed=seed + k), stop_silence_s=None, decode=decode)
        said = np.asarray(reply.ids[: keep_groups * lay.group_len], dtype=np.int64)
        slots = said[lay.kinds(said.size) == TEXT_KIND]
        written = tokenizer.sp.decode(
            [int(i) for i in tokenizer.sp.encode(reply.lead_text)] +
            [int(i) for i in slots if i != lay.text_pad_id])  # fmt: skip
        heard = aligner.align([resample(reply.audio, MIMI_SAMPLE_RATE_HZ,
                                        WHISPER_SAMPLE_RATE_HZ)])[0]  # fmt: skip
        truth = [Word(" " + w, 0.0, 0.0) for w in written.split()]
        wer = word_error_rate(heard, truth) if truth else float(bool(heard))
        rows.append({"written": written, "heard": "".join(w.text for w in heard).strip(),
                     "wer": wer})  # fmt: skip
        errors += wer * max(1, len(truth))
        words += max(1, len(truth))
    return {"wer": errors / max(1, words), "replies": rows}


# -- a whole run -------------------------------------------------------------------------------


def run_checkpoints(run_dir: str | Path, which: str = "last") -> list[tuple[str, int, Path]]:
    """``(name, step, dir)`` of the run's saved models in step order: ``all`` (every kept
    checkpoint, and ``final`` unless a checkpoint holds the same step) or ``last``."""
    run_dir = Path(run_dir)
    found = []
    for d in sorted((run_dir / "checkpoints").glob("step-*")):
        if (d / "weights.pt").exists() and (d / "trainer.pt").exists():
            found.append((d.name, int(d.name.split("-")[1]), d))
    final = run_dir / "final"
    if (final / "weights.pt").exists():
        step = json.loads((final / "speechlm.json").read_text()).get("step", -1)
        if not any(s == step for _, s, _ in found):
            found.append(("final", step, final))
        elif which == "last":
            found = [f for f in found if f[1] != step] + [("final", step, final)]
    found.sort(key=lambda f: (f[1], f[0] != "final"))
    if which == "last":
        return found[-1:]
    if which != "all":
        raise ValueError(f"checkpoints={which!r}: use all or last")
    return found


@dataclass
class EvalResult:
    rows: list[dict] = field(default_factory=list)  # every line of eval.jsonl

    def table(self) -> str:
        """One line per checkpoint and suite: its main numbers."""
        lines = [f"{'checkpoint':14s} {'suite':12s} metrics"]
        seen: dict[tuple, list[str]] = {}
        for r in self.rows:
            if "/" in r["metric"] or r["metric"].startswith("ppl"):
                continue
            value = f"{r['value']:.3f}" if r["metric"].startswith("loss") else \
                f"{100 * r['value']:.1f}%" if r["metric"].startswith("acc") else \
                f"{r['value']:.2f}"  # fmt: skip
            short = r["metric"].replace("acc_", "").replace("loss_", "")
            suite = r["suite"] + (f" (first {r['limit']})" if r.get("limit") else "")
            parts = seen.setdefault((r["checkpoint"], suite), [])
            if not parts and r.get("skipped"):
                parts.append(f"[{r['skipped']} unreadable items skipped]")
            parts.append(f"{short} {value}")
        for (ckpt, suite), parts in seen.items():
            lines.append(f"{ckpt:14s} {suite:12s} " + "  ".join(parts))
        return "\n".join(lines)


def read_eval(run_dir: str | Path) -> list[dict]:
    """The lines of ``RUN/eval.jsonl``, a metric measured again replacing its earlier line."""
    rows: dict[tuple, dict] = {}
    for r in read_jsonl(Path(run_dir) / "eval.jsonl"):
        key = (r["checkpoint"], r["suite"], r.get("limit"), r["metric"])
        rows.pop(key, None)
        rows[key] = r
    return list(rows.values())


def scope(suite: str, limit: int | None) -> int | None:
    """The item limit a suite's rows hold: likelihood suites only (loss, sanity and
    consistency read the run's own data whole)."""
    return limit if suite in SUITES else None


def checkpoint_identity(path: str | Path, step: int) -> str:
    """What tells one checkpoint's weights from another's under the same name: its step and its
    ``weights.pt``'s size and modification time. A resumed training that rewrites ``final/``
    changes them, so its scores are measured again; hashing 14 GB of weights would cost
    minutes. (A copy that does not keep modification times is scored again too.)"""
    st = (Path(path) / "weights.pt").stat()
    return f"step {step}, {st.st_size} B, mtime {st.st_mtime_ns} ns"


def suite_source(suite: str, sources: dict | None, tokens_root: Path) -> str:
    """Where ``suite``'s items come from: the run's token root for its own suites, else the
    ``sources`` entry (a local directory, resolved) or the suite's hub id."""
    if suite not in SUITES:
        return str(Path(tokens_root).resolve())
    given = (sources or {}).get(suite)
    if given is None:
        return SUITES[suite].hub_id
    return str(Path(given).resolve()) if Path(given).exists() else str(given)


def _done_key(r: dict) -> tuple:
    return (r["checkpoint"], r["suite"], r.get("limit"), r.get("weights"), r.get("source"))


def completed(rows: list[dict]) -> set[tuple]:
    """``(checkpoint, suite, limit, weights, source)`` whose metrics are all in ``rows`` (each
    row says how many its group wrote: a run stopped while writing them is not done).
    ``weights``: `checkpoint_identity`; ``source``: `suite_source` (None in rows written
    before they were recorded, so those are measured again)."""
    counts = Counter(_done_key(r) for r in rows)
    return {k for r in rows for k in [_done_key(r)] if counts[k] >= r.get("of", 1)}


def evaluate_run(run_dir: str | Path, suites: Iterable[str] = ("loss", "sanity", "demo"),
                 checkpoints: str = "last", models=None, tokens_root: str | Path | None = None,
                 device: str | None = None, limit: int | None = None,
                 sources: dict | None = None, consistency_prompts: int = 4,
                 max_batch_tokens: int | None = None, progress: bool = True) -> EvalResult:
    """Evaluate ``run_dir`` on ``suites`` (``loss``, ``sanity``, ``consistency`` and the
    likelihood suites of `SUITES`) for its ``checkpoints`` (``last`` or ``all``), appending to
    ``RUN/eval.jsonl``. A (checkpoint, suite, limit) already there in full, for the same
    weights (`checkpoint_identity`: a rewritten ``final/`` is scored again) and the same source
    (`suite_source`), is skipped; a suite stopped midway resumes at its first unscored item.
    The run's own suites (loss, sanity, consistency) raise when ``tokens_root`` holds none of
    its windows, rather than write no score or a perfect one. ``sources``: suite name -> local
    dataset directory (or another hub id); ``limit``: the first items of each suite (or SALMon
    task) only, recorded with the rows (a quick look never stands in for the whole suite). Items
    whose audio cannot be read are left out with their reason (``skipped`` in the rows)."""
    from .align import Aligner
    from .codec import Codec
    from .config import ModelsConfig, pick_device
    from .train import load_run, release_memory, run_models

    run_dir = Path(run_dir)
    device = device or pick_device()
    meta = run_meta(run_dir)
    models = run_models(run_dir, models or ModelsConfig.from_profile())
    tokens_root = Path(tokens_root or meta.get("tokens_root") or models.data_dir / "tokens")
    max_batch_tokens = max_batch_tokens or (32768 if device.startswith("cuda") else 4096)
    eval_dir = run_dir / "eval"
    done = completed(read_eval(run_dir))
    wanted = list(dict.fromkeys(suites))
    unknown = [s for s in wanted if s not in SUITES and s not in ("loss", "sanity", "consistency")]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}: choose from loss, sanity, consistency, "
                         + ", ".join(SUITES))  # fmt: skip
    held_out = [s for s in wanted if s in ("loss", "consistency")]
    if held_out and "val_videos" in meta and not meta["val_videos"]:  # nothing to hold out
        print(f"{', '.join(held_out)}: skipped, {run_dir} held out no validation video (one "
              "video in its token root, or val_fraction 0); the other suites run")  # fmt: skip
        wanted = [s for s in wanted if s not in held_out]
    chosen = run_checkpoints(run_dir, checkpoints)
    if not chosen:
        raise FileNotFoundError(f"{run_dir} has no saved model: train it first")
    shared: dict = {}

    def tools(aligner: bool):  # Mimi, and Whisper when needed, loaded once
        if "codec" not in shared:
            lay = shared["tokenizer"].layout
            shared["codec"] = Codec.load(models, lay.num_codebooks, device)
        if aligner and "aligner" not in shared:
            shared["aligner"] = Aligner.load(models, device)
        return shared["codec"], shared.get("aligner")

    with JsonlWriter(run_dir / "eval.jsonl") as writer:
        for name, step, path in chosen:
            weights = checkpoint_identity(path, step)
            source = {s: suite_source(s, sources, tokens_root) for s in wanted}
            todo = [s for s in wanted
                    if (name, s, scope(s, limit), weights, source[s]) not in done]  # fmt: skip
            if not todo:
                continue
            model, tokenizer = load_run(run_dir, models, device, checkpoint=path)
            shared["tokenizer"] = lay_tok = tokenizer
            lay = lay_tok.layout
            for suite in todo:
                started = time.perf_counter()
                skipped = 0
                key = {"weights": weights, "source": source[suite]}
                if suite == "loss":
                    windows = run_windows(run_dir, tokens_root, lay, "val")
                    if not windows:
                        raise no_windows("val", run_dir, tokens_root, suite)
                    metrics = heldout_loss(model, lay, windows, progress=progress)
                    n = metrics.pop("windows")
                elif suite == "sanity":
                    memorised = run_windows(run_dir, tokens_root, lay, "memorised",
                                            limit=SANITY_ITEMS + 1)  # fmt: skip
                    if not memorised:
                        raise no_windows("memorised", run_dir, tokens_root, suite)
                    others = run_windows(run_dir, tokens_root, lay, "val", limit=SANITY_ITEMS)
                    items, encoded = sanity_items(memorised, others, lay, SANITY_ITEMS)
                    lines = score_items(model, lay, encoded, items,
                                        eval_dir / name / "sanity.jsonl", variants=("text",),
                                        max_batch_tokens=max_batch_tokens, progress=progress,
                                        key=key)  # fmt: skip
                    metrics, n = accuracies(lines), len(lines)
                elif suite == "consistency":
                    prompts = run_windows(run_dir, tokens_root, lay, "val",
                                          limit=consistency_prompts)  # fmt: skip
                    if not prompts:
                        raise no_windows("val", run_dir, tokens_root, suite)
                    codec, aligner = tools(aligner=True)
                    out = consistency(model, lay_tok, codec, aligner, prompts,
                                      progress=progress)  # fmt: skip
                    metrics, n = {"wer": out["wer"]}, len(out["replies"])
                    write_json_atomic(eval_dir / name / "consistency.json", out)
                else:
                    items = load_suite(suite, (sources or {}).get(suite), limit)
                    # Whisper writes the text slots of clips without a transcript of their own
                    untold = any(c.words is None for it in items for c in it.clips)
                    codec, aligner = tools(aligner=untold)
                    store = EncodedSuite(eval_dir / "encoded" / suite)  # a limit: its first blocks
                    made = {"mimi": str(models.mimi), "source": source[suite],
                            "whisper": str(models.whisper) if untold else None}  # fmt: skip
                    encoded = store.build(items, codec, lay_tok, aligner, progress, made)
                    lines = score_items(model, lay, encoded, items,
                                        eval_dir / name / f"{suite}.jsonl",
                                        max_batch_tokens=max_batch_tokens, progress=progress,
                                        errors=store.errors, key=key)  # fmt: skip
                    skipped = sum("error" in r for r in lines)
                    metrics, n = accuracies(lines), len(lines) - skipped
                seconds = time.perf_counter() - started
                extra = {"chance": chance_level(lines)} if suite not in ("loss", "consistency") \
                    else {}  # fmt: skip
                if scope(suite, limit) is not None:
                    extra["limit"] = limit
                if skipped:
                    extra["skipped"] = skipped
                for metric, value in metrics.items():  # "of": a group cut short is done again
                    row = {"checkpoint": name, "step": step, "suite": suite, "metric": metric,
                           "value": value, "n": n, **extra, "seconds": round(seconds, 2),
                           "of": len(metrics), **key}  # fmt: skip
                    writer.write(row)
            del model
            release_memory()  # the next checkpoint loads into the memory this one held
    return EvalResult(read_eval(run_dir))  # a metric measured again: its latest row


def explain_item(model, tokenizer: SpeechTokenizer, codec, item: Item, aligner=None) -> dict:
    """One item laid open: each clip's words, token ids, log-probability per audio token and
    mean over the semantic codebook and over all codebooks, with the text slots as trained
    and all ``TEXT_PAD``; and the verdicts `score_items` gives (`right_wins`)."""
    lay = tokenizer.layout
    encoded = encode_clips(item.clips, codec, tokenizer, aligner)
    out = {"id": item.id, "subset": item.subset, "correct": item.correct, "clips": []}
    for clip, ids in zip(item.clips, encoded):
        row = {"words": " ".join(w.text.strip() for w in clip.words or []), "ids": ids}
        for variant in VARIANTS:
            seq = ids if variant == "text" else speech_only(ids, lay)
            logp = token_logprobs(model, lay, seq)
            kinds = lay.kinds(seq.size)
            row[variant] = {"logp": logp,
                            "semantic": float(np.nanmean(np.where(kinds == 1, logp, np.nan))),
                            "all": float(np.nanmean(logp))}  # fmt: skip
        out["clips"].append(row)
    for variant in VARIANTS:  # the verdicts as `score_items` gives them (ties are wrong)
        means = [[c[variant][span] for span in SPANS] for c in out["clips"]]
        out[variant] = {span: right_wins([m[k] for m in means], item.correct)
                        for k, span in enumerate(SPANS)}  # fmt: skip
    return out


def pivot(rows: list[dict], suite: str, metrics: Iterable[str] | None = None) -> list[dict]:
    """A table of one suite: a row per checkpoint, a column per metric (accuracies in %); a
    ``--limit`` run's numbers only where the whole suite was not scored."""
    table: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r.get("limit") is None):  # whole-suite rows win
        if r["suite"] != suite or (metrics and r["metric"] not in metrics):
            continue
        row = table.setdefault(r["checkpoint"], {"checkpoint": r["checkpoint"], "step": r["step"]})
        acc = r["metric"].startswith("acc_")
        row[r["metric"].removeprefix("acc_")] = round(100 * r["value"], 1) if acc else r["value"]
    return sorted(table.values(), key=lambda row: row["step"])


def read_consistency(run_dir: str | Path, checkpoint: str | None = None) -> dict:
    """The replies `consistency` wrote for ``checkpoint`` (default the latest one evaluated):
    ``{"wer", "replies": [{"written", "heard", "wer"}]}``."""
    rows = [r for r in read_eval(run_dir) if r["suite"] == "consistency"]
    if checkpoint is None and rows:
        checkpoint = max(rows, key=lambda r: r["step"])["checkpoint"]
    path = Path(run_dir) / "eval" / str(checkpoint) / "consistency.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: evaluate the run with the consistency suite first")
    return json.loads(path.read_text())


# -- published numbers, and what the full suites cost ---------------------------------------------

SLAM_MD = "slp-rl/slamkit docs/SLAM.md (results of the Slam paper, arXiv 2502.15814)"
SALMON_README = "slp-rl/salmon README (leaderboard; SALMon, ICASSP 2025)"
# Accuracy (%) as published; SALMon as the mean of its 8 tasks' accuracies in the leaderboard
# of slp-rl/salmon's README as of its latest revision (TWIST 7B: 61.5, 71.0, 70.0, 55.0, 60.5,
# 62.0, 51.5, 54.5; the mean computed here). That leaderboard lists no SpiritLM or Moshi, so
# their SALMon cells stay empty. Protocols differ between papers (mean or summed
# log-likelihood, which tokens count, ties), so a few points are noise; no primary source we
# could read had sWUGGY for these models.
REFERENCE_SCORES: list[dict] = [
    {"model": "GSLM (100M)", "sblimp": 54.2, "sstorycloze": 53.3, "tstorycloze": 66.6,
     "source": SLAM_MD},
    {"model": "TWIST-7B", "sblimp": 59.0, "sstorycloze": 55.3, "tstorycloze": 74.1,
     "salmon": 60.75, "source": f"{SLAM_MD}; SALMon: {SALMON_README}"},
    {"model": "SpiritLM 7B, speech only", "sblimp": 58.0, "sstorycloze": 54.8,
     "tstorycloze": 72.9, "source": SLAM_MD},
    {"model": "SpiritLM 7B, with text", "sblimp": 58.3, "sstorycloze": 61.0,
     "tstorycloze": 82.9, "source": SLAM_MD},
    {"model": "Moshi 7B, speech only", "sblimp": 58.9, "sstorycloze": 58.7, "tstorycloze": 81.8,
     "source": SLAM_MD},
    {"model": "Moshi 7B, with text", "sblimp": 58.8, "sstorycloze": 60.8, "tstorycloze": 83.0,
     "source": SLAM_MD},
    {"model": "Slam (358M)", "sblimp": 58.86, "sstorycloze": 58.04, "tstorycloze": 82.04,
     "source": SLAM_MD},
]  # fmt: skip
REFERENCE_SUITES = ("swuggy", "sblimp", "sstorycloze", "tstorycloze", "salmon")


def reference_rows(rows: list[dict], variant: str = "text", span: str = "semantic") -> list[dict]:
    """`REFERENCE_SCORES`, then this run's last evaluated checkpoint on the same suites
    (``acc_<variant>_<span>``, in %; a suite it was not scored on is left empty)."""
    out = [dict(r) for r in REFERENCE_SCORES]
    mine = [r for r in rows if r["metric"] == f"acc_{variant}_{span}"
            and r["suite"] in REFERENCE_SUITES]  # fmt: skip
    whole = [r for r in mine if not r.get("limit")]  # a quick look only when nothing else
    mine = whole or mine
    if mine:
        last = max(r["step"] for r in mine)
        part = "" if whole else f", first {max(r['limit'] for r in mine)} items"
        row = {"model": f"this run, step {last} ({variant} slots, {span}{part})",
               "source": "eval.jsonl"}  # fmt: skip
        for r in mine:
            if r["step"] == last:
                row[r["suite"]] = round(100 * r["value"], 1)
        out.append(row)
    columns = ("model", *REFERENCE_SUITES, "source")
    return [{c: r.get(c) for c in columns} for r in out]


# Items per suite as the hub copies state them (sBLIMP: its dataset card; SALMon: 8 tasks x
# 200; the StoryClozes: the 1,871 stories of the text test set they speak); sWUGGY's size was
# not stated where we could read it. Clip lengths are our assumptions, not measurements.
SUITE_SIZES = {"swuggy": (None, 1.0), "sblimp": (25_200, 2.8), "sstorycloze": (1_871, 18.0),
               "tstorycloze": (1_871, 18.0), "salmon": (1_600, 6.0)}  # fmt: skip


def suite_cost_plan(mfu: float = 0.4, per_items: int = 1000) -> list[dict]:
    """GPU minutes to score each full suite with 7B (both variants, two clips an item), from
    FLOPs: a forward costs 2N per token, at ``mfu`` of the GPU's dense bf16 peak. sWUGGY, whose
    size we do not know, per ``per_items`` items. Before the first checkpoint is scored, Mimi
    and Whisper encode each clip once per run: not in the minutes (stage 03's rates apply, not
    measured on a GPU); ``audio h`` says how much audio that is."""
    from .train import GPU_BF16_TFLOPS, MISTRAL_7B, mistral_params

    counts = mistral_params(vocab=40256, **MISTRAL_7B)
    flops_per_token = 2 * counts["layers"]  # the output layer: one codebook's rows, ~2 %
    rows = []
    for suite, (items, clip_s) in SUITE_SIZES.items():
        n = items or per_items
        tokens = n * 2 * len(VARIANTS) * clip_s * 55.0
        row = {"suite": suite if items else f"{suite} (per {per_items} items)", "items": n,
               "clip_s (assumed)": clip_s, "audio h": round(n * 2 * clip_s / 3600, 1),
               "tokens (M)": round(tokens / 1e6, 1)}  # fmt: skip
        for gpu, tflops in GPU_BF16_TFLOPS.items():
            row[f"{gpu} min"] = round(tokens * flops_per_token / (tflops * 1e12 * mfu) / 60, 1)
        rows.append(row)
    return rows
