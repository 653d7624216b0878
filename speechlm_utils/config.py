"""Profiles and per-stage configs: the only module that reads environment variables.

Two profiles run the same code:
- ``full``: GPU or Colab; Mistral-7B, kyutai's Mimi and openai-whisper weights from their hubs.
- ``tiny``: CPU, CI and the offline demo; the real architectures with random weights, built once
  into ``data/models/tiny/`` and loaded back through the same loaders.

``SPEECHLM_PROFILE=tiny|full`` picks one; unset, it is ``full`` when CUDA is available and
``tiny`` elsewhere. ``SPEECHLM_LM``, ``SPEECHLM_MIMI`` and ``SPEECHLM_WHISPER`` choose the models
(hub names or local paths; the CLI's ``--lm``, ``--mimi`` and ``--whisper`` win over them).
``SPEECHLM_DATA_DIR`` moves the data root (default: ``data/`` of the
checkout the current directory is in, else ``./data``). The profiles never share generated
data: the full profile writes into the root itself, the tiny one into ``<root>/tiny/``, so a
demo run can never leave random-codec tokens where a full run would train on them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

Profile = Literal["tiny", "full"]
PROFILES: tuple[str, ...] = ("tiny", "full")
PROFILE_ENV = "SPEECHLM_PROFILE"
DATA_DIR_ENV = "SPEECHLM_DATA_DIR"
MODEL_ENV = {"lm": "SPEECHLM_LM", "mimi": "SPEECHLM_MIMI", "whisper": "SPEECHLM_WHISPER"}


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imported lazily: config stays cheap to import)."""
    import torch

    return torch.cuda.is_available()


def resolve_profile(profile: str | None = None) -> Profile:
    """The profile to use: the argument, else ``$SPEECHLM_PROFILE``, else by hardware."""
    chosen = profile or os.environ.get(PROFILE_ENV, "").strip().lower() or None
    if chosen is None:
        return "full" if cuda_available() else "tiny"
    if chosen not in PROFILES:
        raise ValueError(
            f"unknown profile {chosen!r} (from {'the argument' if profile else PROFILE_ENV}); "
            f"use one of {', '.join(PROFILES)}"
        )
    return chosen  # type: ignore[return-value]


def find_repo_root(start: Path | None = None) -> Path | None:
    """The checkout holding ``start`` (default: the current directory), or None."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "speechlm_utils").is_dir() and (candidate / "pyproject.toml").is_file():
            return candidate
    return None


def demo_dir() -> Path:
    """The bundled demo podcast (``data/demo`` of the checkout this package runs from)."""
    path = Path(__file__).resolve().parents[1] / "data" / "demo"
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is missing: the demo podcast ships with the repository; install it from "
            "a clone (`pip install -e .`) rather than from a wheel"
        )
    return path


def default_data_dir(profile: str | None = None) -> Path:
    """The data root of ``profile`` (resolved as in `resolve_profile`): ``$SPEECHLM_DATA_DIR``,
    else ``<checkout>/data``, else ``./data``; with ``tiny/`` appended for the tiny profile."""
    if os.environ.get(DATA_DIR_ENV):
        base = Path(os.environ[DATA_DIR_ENV]).expanduser().resolve()
    else:
        root = find_repo_root()
        base = (root / "data") if root else (Path.cwd() / "data").resolve()
    return base / "tiny" if resolve_profile(profile) == "tiny" else base


def search_terms_file(data_dir: Path) -> Path:
    """``searches.txt`` in ``data_dir`` when the user keeps one there, else the shipped list."""
    own = Path(data_dir) / "searches.txt"
    return own if own.is_file() else Path(__file__).resolve().parents[1] / "data" / "searches.txt"


def describe_device() -> str:
    """One line naming the compute device, for the top of each notebook."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps (Apple GPU)"
    return f"cpu: {os.cpu_count()} cores"


def distributed_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` under torchrun (or any launcher setting RANK and
    WORLD_SIZE); ``(0, 1, 0)`` otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))  # fmt: skip


def pick_device() -> str:
    """The best device torch can use here: cuda, then mps, then cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes in bf16 natively (Ampere and later), not by emulation: a T4
    or V100 reports bf16 as supported but emulates it, slowly."""
    import torch

    return str(device).startswith("cuda") and torch.cuda.is_available() and \
        torch.cuda.is_bf16_supported(including_emulation=False)  # fmt: skip


def pick_dtype(device: str):
    """The dtype a model's (frozen) weights are loaded in and computed with on ``device``: bf16
    where native (Ampere and later); fp16 on older GPUs (a T4: training then scales the loss,
    see `train.Trainer`); fp32 on CPUs. What trains is kept in fp32 in every case."""
    import torch

    if native_bf16(device):
        return torch.bfloat16
    if str(device).startswith("cuda"):
        return torch.float16
    return torch.float32


@dataclass
class StageConfig:
    """Base of every stage config: the profile, the data root, and ``from_profile``.

    Subclasses set ``_tiny`` to the field values that differ in the tiny profile.
    """

    profile: Profile = "full"
    data_dir: Path = field(default_factory=default_data_dir)

    _tiny: ClassVar[dict] = {}

    @classmethod
    def from_profile(cls, profile: str | None = None, **overrides):
        """The config for ``profile`` (resolved as in `resolve_profile`), then ``overrides``."""
        resolved = resolve_profile(profile)
        values = dict(cls._tiny) if resolved == "tiny" else {}
        values.update(overrides)
        if values.get("data_dir") is None:  # each profile its own generated data
            values["data_dir"] = default_data_dir(resolved)
        values["data_dir"] = Path(values["data_dir"]).expanduser().resolve()
        return cls(profile=resolved, **values)

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for f in dataclasses.fields(self):
            lines.append(f"  {f.name} = {getattr(self, f.name)!r}")
        return "\n".join(lines) + "\n)"


@dataclass
class ModelsConfig(StageConfig):
    """Where the three models come from: hub names (full) or local tiny files (tiny).

    ``chosen`` names the models picked on purpose (an argument, ``--lm``/``--mimi``/
    ``--whisper``, or ``$SPEECHLM_LM``/``$SPEECHLM_MIMI``/``$SPEECHLM_WHISPER``); the others
    follow what earlier stages recorded (`follow`): training uses the LM the tokens were made
    for, chat the models of the run.
    """

    lm: str = "mistralai/Mistral-7B-v0.1"  # hub repo or local dir for MistralForCausalLM
    mimi: str = "kyutai/moshiko-pytorch-bf16"  # hub repo holding Mimi, or a local weights file
    whisper: str = "small.en"  # openai-whisper model name, or a local checkpoint file
    chosen: tuple[str, ...] = ()  # which of lm, mimi, whisper were picked on purpose

    _tiny: ClassVar[dict] = {"lm": "tiny", "mimi": "tiny", "whisper": "tiny"}

    @classmethod
    def from_profile(cls, profile: str | None = None, **overrides):
        """The profile's models, then ``$SPEECHLM_LM``/``MIMI``/``WHISPER``, then ``overrides``
        (None values are ignored, so CLI flags that were not given can be passed through)."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        chosen = set(overrides.pop("chosen", ()))
        for key, env in MODEL_ENV.items():
            if key not in overrides and os.environ.get(env, "").strip():
                overrides[key] = os.environ[env].strip()
        chosen |= {k for k in MODEL_ENV if k in overrides}
        return super().from_profile(profile, chosen=tuple(sorted(chosen)), **overrides)

    def follow(self, recorded: dict, what: str = "") -> ModelsConfig:
        """These models, with those not `chosen` replaced by the ones ``recorded`` (a token
        root's layout.json or a run's run.json) where those can be loaded here: a hub name, or
        a local path that exists. The text tokenizer check (`train.check_text_tokenizer`)
        still guards a chosen LM that does not match."""
        changes = {}
        for key in MODEL_ENV:
            value = recorded.get(key)
            if key in self.chosen or not value or value == getattr(self, key):
                continue
            if Path(value).exists() or not _looks_local(value):
                changes[key] = str(value)
        return dataclasses.replace(self, **changes) if changes else self

    def describe(self) -> str:
        """Three lines: each model and whether it was chosen or is the profile's default."""
        return "\n".join(f"{key:8s} {getattr(self, key)}  "
                         f"({'chosen' if key in self.chosen else self.profile + ' default'})"
                         for key in MODEL_ENV)  # fmt: skip

    @property
    def tiny_dir(self) -> Path:
        """Where the tiny profile's random-weight checkpoints are built and cached."""
        return self.data_dir / "models" / "tiny"

    def __post_init__(self) -> None:
        # a local model is recorded by its absolute path: a later stage may run elsewhere
        for key in MODEL_ENV:
            value = getattr(self, key)
            if value != "tiny" and not Path(value).is_absolute() and Path(value).exists():
                setattr(self, key, str(Path(value).resolve()))
        # "tiny" is a placeholder for the local files, so paths follow data_dir.
        if self.lm == "tiny":
            self.lm = str(self.tiny_dir / "mistral")
        if self.mimi == "tiny":
            self.mimi = str(self.tiny_dir / "mimi.safetensors")
        if self.whisper == "tiny":
            self.whisper = str(self.tiny_dir / "whisper.pt")


def _looks_local(name: str) -> bool:
    """Whether a model name is a filesystem path rather than a hub name or a Whisper size."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or \
        name.endswith((".pt", ".safetensors", ".bin"))  # fmt: skip


@dataclass
class IndexConfig(StageConfig):
    """Stage 01: search terms to a deduplicated index of long conversational videos."""

    workers: int = 8  # threads issuing searches
    per_query: int = 100  # results kept per search term, at most
    min_duration_s: float = 30 * 60  # shorter videos are rarely real conversations
    max_duration_s: float = 4 * 3600  # longer ones are mostly streams and compilations
    requests_per_s: float = 2.0  # global rate limit across all threads
    exclude_words: tuple[str, ...] = ("music", "audiobook", "asmr", "lyrics", "karaoke")
    retries: int = 5  # per request, on network errors, HTTP 429 and 5xx
    backoff_s: float = 1.0  # first retry waits 1-2x this, doubling each time
    timeout_s: float = 30.0  # per request
    youtube_url: str = "https://www.youtube.com"  # a mirror or local stand-in may replace it

    _tiny: ClassVar[dict] = {"workers": 2, "min_duration_s": 10.0}


@dataclass
class ScrapeConfig(StageConfig):
    """Stage 02: download audio-only streams and cut them by segment copy."""

    workers: int = 16  # videos in flight (downloads are I/O bound)
    chunk_s: float = 20.0  # nominal chunk length; cuts land on packet boundaries
    max_hours: float | None = None  # stop after this much audio
    min_free_gb: float = 5.0  # stop cleanly before the disk fills
    download_retries: int = 3  # yt-dlp's own retries per download
    socket_timeout_s: float = 30.0
    cookies_file: str | None = None  # for age-gated or region-locked videos (yt-dlp cookiefile)
    rate_limit_bps: int | None = None  # download bandwidth cap per video, bytes/s
    proxy: str | None = None  # e.g. socks5://127.0.0.1:1080
    speech_filter: bool = False  # drop chunks with little speech (silero-vad)
    min_speech_ratio: float = 0.3  # share of a chunk that must be speech to keep it
    captions: bool = False  # also fetch YouTube captions (human, else automatic) via yt-dlp
    caption_langs: tuple[str, ...] = ("en", "en-US", "en-GB")  # first available wins
    sidecar: bool = True  # also fetch a transcript (.json/.vtt/.srt) beside non-YouTube media
    # who speaks when, for the duplex layout: a transcript's speaker labels always; with
    # diarize, pyannote's pipeline for the videos without (pip install pyannote.audio, and a
    # Hugging Face token that accepted its terms)
    diarize: bool = False

    _tiny: ClassVar[dict] = {"workers": 2, "min_free_gb": 0.5}


@dataclass
class TokenizeConfig(StageConfig):
    """Stage 03: the interleaved token layout and the preprocessing run."""

    num_codebooks: int = 4  # Mimi codebooks kept, of 8; codebook 0 is the semantic one
    frames_per_group: int = 5  # Mimi frames (80 ms each) per group
    text_slots_per_group: int = 2  # text tokens per group, before its audio tokens
    text_lead_s: float = 2.0  # a word's text comes this long before its sound
    batch_size: int = 16  # videos encoded side by side (Mimi lanes); chunks per Whisper batch
    workers: int = 4  # threads decoding chunks (each runs ffmpeg)
    text_source: str = "whisper"  # whisper | captions (any stored timed text) | sidecar
    min_duration_s: float = 1.0  # shorter streams (runs of good chunks) are skipped
    silence_dbfs: float = -60.0  # quieter chunks are skipped as silent
    max_video_s: float | None = None  # only each video's first seconds, in whole chunks (a look)
    # the duplex layout (stage 08): K_user codebooks of the user's track after the assistant's
    # K in each frame (0: one mixed stream, the mono layout), the assistant of each example
    # (most_talkative, least_talkative, a speaker's name, or both: each of the two most
    # talkative once), and who gets overlapping speech (speakers.OVERLAP_POLICIES)
    user_codebooks: int = 0
    assistant: str = "most_talkative"
    overlap: str = "both"

    # tiny: the demo's true transcripts (the random Whisper would write nonsense)
    _tiny: ClassVar[dict] = {"batch_size": 4, "workers": 1, "text_source": "sidecar"}


@dataclass
class TrainConfig(StageConfig):
    """Stage 05: finetuning the LM on the token stream."""

    seq_len: int = 4092  # tokens per window, a multiple of the group (186 groups = 74.4 s)
    batch_size: int = 4  # windows per micro-batch (per GPU)
    grad_accum: int = 8  # micro-batches per optimizer step
    lr: float = 1e-4  # peak learning rate (LoRA); ~2e-5 for full finetuning
    weight_decay: float = 0.1  # on matrices only
    warmup_steps: int = 100
    max_steps: int = 10_000
    epochs: float | None = None  # size the schedule to the data instead (train.schedule_for_data)
    clip_norm: float = 1.0
    lora_r: int | None = 64  # LoRA rank, or None to train every kept weight
    keep_every: int | None = None  # layer pruning: keep every n-th layer
    keep_layers: tuple[int, ...] | None = None  # or exactly these layers
    # (text, pad, semantic, acoustic[, user]): text weighs the choice of word, pad the
    # word-or-pad decision in every text slot alike (pad odds stay calibrated; see
    # train.weighted_loss); user, the duplex layout's user stream (default 0: conditioned on,
    # not predicted, as moshi-finetune trains; J-Moshi predicts both)
    loss_weights: tuple[float, ...] = (1.0, 0.5, 1.0, 0.5)
    grad_checkpointing: bool = True  # recompute activations in backward: fits 4k x 7B
    compile: bool = False  # torch.compile the model
    memory_check: bool = True  # refuse, naming what fits, a recipe planned above the GPU's memory
    fsdp: bool = False  # under torchrun: shard the model (full 7B) instead of DDP
    dtype: str | None = None  # the frozen base's: bf16, fp16 (CUDA) or fp32; None: the device's
    val_fraction: float = 0.05  # of the videos, held out whole
    train_chunks: int | None = None  # train on the first N chunks only (overfit on purpose)
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 3  # checkpoints kept
    sample_every: int = 1000  # audio sample to W&B; 0: never
    wandb_mode: str = "online"  # online | offline | disabled
    wandb_project: str = "speechlm"
    seed: int = 0

    _tiny: ClassVar[dict] = {
        "seq_len": 440,  # 20 groups = 8 s
        "batch_size": 4,
        "grad_accum": 1,
        "lr": 1e-2,
        "warmup_steps": 10,
        "max_steps": 150,
        "train_chunks": 2,  # memorise two demo chunks, so chat can show it learned
        "lora_r": None,
        "loss_weights": (1.0, 0.1, 1.0, 0.5),  # a weaker decision term memorises faster
        "grad_checkpointing": False,
        "val_fraction": 0.34,  # one of the three demo episodes
        "eval_every": 25,
        "eval_batches": 4,
        "save_every": 50,
        "sample_every": 0,
        "wandb_mode": "offline",  # no account needed
    }


@dataclass
class ChatConfig(StageConfig):
    """Stage 06: generation settings for the chat widget and CLI."""

    max_response_s: float = 10.0
    text_temperature: float = 0.7
    audio_temperature: float = 0.8
    text_top_k: int = 25  # of 32k word pieces (Moshi's text default)
    audio_top_k: int = 250  # of a codebook's 2048 codes
    seed: int | None = None
    # attention span in tokens for an LM without a sliding window of its own (Mistral-7B-v0.3):
    # the KV cache keeps this many positions, so a conversation runs in bounded memory
    # (4096 tokens = 74 s); an LM with one (v0.1: 4096) keeps its own
    attention_window: int = 4096
    # how each token runs (`generate.pick_decode`): auto = the compiled ring-cache step on a
    # CUDA GPU, transformers' own forward (eager, the reference) elsewhere
    decode: str = "auto"

    _tiny: ClassVar[dict] = {"max_response_s": 4.0}


@dataclass
class EvalConfig(StageConfig):
    """Stage 07: what to evaluate a run on (`evaluate.evaluate_run`)."""

    # loss, sanity and consistency come from the run's own data; the likelihood suites
    # (evaluate.SUITES) are read from the Hugging Face hub with `datasets`
    suites: tuple[str, ...] = ("loss", "sanity", "consistency", "swuggy", "sblimp",
                               "sstorycloze", "tstorycloze", "salmon")  # fmt: skip
    checkpoints: str = "all"  # all | last
    limit: int | None = None  # the first N items of each suite (or SALMon task) only
    consistency_prompts: int = 16  # validation prompts whose replies Whisper transcribes
    max_batch_tokens: int | None = None  # per scoring forward; None: 32768 on a GPU, else 4096

    _tiny: ClassVar[dict] = {"suites": ("loss", "sanity", "consistency", "demo"),
                             "consistency_prompts": 2}  # fmt: skip


def hf_token() -> str | None:
    """``$HF_TOKEN`` (gated hub weights such as pyannote's), never stored in a config that
    notebooks print."""
    return os.environ.get("HF_TOKEN", "").strip() or None


def ffmpeg_choice() -> str | None:
    """``$SPEECHLM_FFMPEG``: ``system``, ``bundled`` (imageio-ffmpeg's) or an ffmpeg binary's
    path; None when unset (then the system one if present, else the bundled one)."""
    return os.environ.get("SPEECHLM_FFMPEG", "").strip() or None
