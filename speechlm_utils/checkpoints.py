"""Model sources for both profiles, and the tiny profile's random-weight checkpoints.

The tiny profile builds the real architectures (Mimi, a small Whisper, a small Mistral with
Mistral-7B's real 32k vocabulary) with random weights, saves them under
``data/models/tiny/`` and loads them back through the loaders the full profile uses:
``moshi.models.loaders.get_mimi(path)``, ``whisper.load_model(path)`` and
``MistralForCausalLM.from_pretrained(dir)``. After loading, both profiles share every line.

Untrained models: the tiny Mimi makes noise and the tiny Whisper writes nonsense. They exist to
run the pipeline end to end offline, never to judge quality.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .config import ModelsConfig
from .manifest import atomic_path

TINY_SEED = 1234
TEXT_TOKENIZER_FILE = "tokenizer.model"  # SentencePiece file name in Mistral's hub repos

# Small but real: 4 layers, GQA (4 query heads, 2 KV heads), a short sliding window so that
# rolling-cache generation is exercised within seconds of audio.
TINY_MISTRAL = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=8192,
    sliding_window=256,
    rope_theta=10_000.0,
    tie_word_embeddings=False,
)
# n_audio_ctx must stay 1500: Whisper always pads audio to 30 s = 3000 mel frames, halved by
# the conv stem. English-only vocabulary (51864), as in the ".en" models.
TINY_WHISPER = dict(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=51864,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=2,
    n_text_layer=2,
)


def mistral_v1_tokenizer_file() -> Path:
    """Mistral-7B-v0.1's SentencePiece model, shipped inside the mistral-common wheel."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall mistral-common (`pip install -U mistral-common`)"
        )
    return path


def _atomic_dir(final: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and rename the result into place, so no half-built dir is seen."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp)
        tmp.rename(final)
    except OSError:
        if not final.exists():  # another process won the race if it exists
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _atomic_file(final: Path, write) -> Path:
    """Run ``write(tmp_path)`` and rename into place, unless ``final`` exists."""
    if not final.exists():
        with atomic_path(final) as tmp:
            write(tmp)
    return final


def _calibration_audio(duration_s: float = 60.0, sample_rate_hz: int = 24_000) -> torch.Tensor:
    """Varied synthetic sound (tones, chirps, noise bursts, silences): ``[1, 1, T]``."""
    gen = torch.Generator().manual_seed(TINY_SEED)
    n_pieces = int(duration_s * 4)  # 250 ms pieces
    piece = sample_rate_hz // 4
    t = torch.arange(piece) / sample_rate_hz
    out = []
    for _ in range(n_pieces):
        kind = int(torch.randint(0, 4, (1,), generator=gen))
        amp = float(torch.rand(1, generator=gen)) ** 2
        f0 = 80.0 + 3000.0 * float(torch.rand(1, generator=gen))
        if kind == 0:
            sig = torch.sin(2 * torch.pi * f0 * t)
        elif kind == 1:
            sig = torch.sin(2 * torch.pi * (f0 + 2000.0 * t) * t)
        elif kind == 2:
            sig = torch.randn(piece, generator=gen)
        else:
            sig = torch.zeros(piece)
        out.append(amp * sig)
    return torch.cat(out).clamp(-1, 1)[None, None]


@torch.no_grad()
def _fill_codebooks(mimi) -> None:
    """Initialise every codebook from encoded calibration audio, as k-means init would.

    A fresh quantizer has all-zero codebooks, so every frame would encode to code 0. Each
    residual stage gets codes drawn from its own input (with jitter), so codes vary with the
    input the way trained ones do. Latents: ``[B, D, F]``.
    """
    gen = torch.Generator().manual_seed(TINY_SEED)
    latent = mimi._encode_to_unquantized_latent(_calibration_audio())
    for rvq in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
        x = rvq.input_proj(latent)[0].T  # [F, D]
        for layer in rvq.vq.layers:
            book = layer._codebook
            pick = torch.randint(0, x.shape[0], (book.codebook_size,), generator=gen)
            jitter = 0.05 * x.std(0, keepdim=True) * torch.randn(
                book.codebook_size, x.shape[1], generator=gen
            )
            vectors = x[pick] + jitter
            book.embedding_sum.copy_(vectors * book.cluster_usage[:, None])
            book._initialized.fill_(1.0)
            book.register_buffer("_embedding", None, persistent=False)
            nearest = torch.cdist(x, vectors).argmin(-1)
            x = x - vectors[nearest]  # the next stage quantizes what this one left


def build_tiny_mimi(path: Path) -> Path:
    """Save Mimi's architecture with random weights and calibrated codebooks to ``path``."""
    from moshi.models import loaders
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        torch.manual_seed(TINY_SEED)
        mimi = loaders.get_mimi(None, device="cpu")
        _fill_codebooks(mimi)
        state = {k: v.contiguous() for k, v in mimi.state_dict().items()}
        save_file(state, str(tmp))

    return _atomic_file(path, write)


def build_tiny_whisper(path: Path) -> Path:
    """Save a small openai-whisper model with random weights to ``path``."""
    import whisper
    from whisper.model import ModelDimensions

    def write(tmp: Path) -> None:
        torch.manual_seed(TINY_SEED)
        model = whisper.model.Whisper(ModelDimensions(**TINY_WHISPER))
        torch.save({"dims": TINY_WHISPER, "model_state_dict": model.state_dict()}, tmp)

    return _atomic_file(path, write)


def build_tiny_mistral(path: Path) -> Path:
    """Save a small MistralForCausalLM with the real 32k vocabulary and its tokenizer."""
    return build_random_mistral(path, TINY_MISTRAL, torch.float32)


# A mid-size Mistral (430 M parameters; 15 % of them embeddings, 5 % in 7B) for measuring
# what loading costs in memory on a CPU (tests/test_memory.py, benchmarks/bench_memory.py).
# Mistral-7B-v0.1's own shape (its config.json): what the GPU benchmarks build with random
# weights, which cost the same compute as the real ones.
FULL_MISTRAL = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                    max_position_embeddings=32768, sliding_window=4096, rope_theta=10_000.0,
                    tie_word_embeddings=False)  # fmt: skip
MID_MISTRAL = dict(TINY_MISTRAL, hidden_size=1024, intermediate_size=4096,
                   num_hidden_layers=24, num_attention_heads=8, num_key_value_heads=2,
                   head_dim=128, sliding_window=None)  # fmt: skip


def build_random_mistral(path: Path, shape: dict, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Save a MistralForCausalLM of ``shape`` (MistralConfig fields) with random weights in
    ``dtype``, the real 32k vocabulary and Mistral-7B-v0.1's tokenizer, as a hub repo has."""
    from transformers import MistralConfig, MistralForCausalLM

    def build(tmp: Path) -> None:
        torch.manual_seed(TINY_SEED)
        sp_file = mistral_v1_tokenizer_file()
        config = MistralConfig(vocab_size=_sentencepiece_size(sp_file), bos_token_id=1,
                               eos_token_id=2, **shape)  # fmt: skip
        MistralForCausalLM(config).to(dtype).save_pretrained(tmp)
        shutil.copyfile(sp_file, tmp / TEXT_TOKENIZER_FILE)

    return _atomic_dir(path, build)


def _sentencepiece_size(path: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()


def ensure_tiny_checkpoints(models: ModelsConfig) -> dict[str, Path]:
    """Build whichever tiny checkpoint is missing (a few seconds each); return their paths."""
    return {
        "mimi": build_tiny_mimi(Path(models.mimi)),
        "whisper": build_tiny_whisper(Path(models.whisper)),
        "lm": build_tiny_mistral(Path(models.lm)),
    }


def _ensure_if_tiny(models: ModelsConfig, key: str) -> None:
    """Build the tiny profile's own checkpoint ``key`` when it is the one asked for (never at a
    path the user or a recorded run chose)."""
    if models.profile != "tiny":
        return
    own = {"lm": "mistral", "mimi": "mimi.safetensors", "whisper": "whisper.pt"}[key]
    path = Path(getattr(models, key))
    if path.name == own and path.parent.name == "tiny" and path.parent.parent.name == "models":
        {"mimi": build_tiny_mimi, "whisper": build_tiny_whisper, "lm": build_tiny_mistral}[key](
            path)


def mimi_weights_file(models: ModelsConfig) -> Path:
    """A local Mimi weights file: the tiny one, a given file, or the hub file (downloaded)."""
    _ensure_if_tiny(models, "mimi")
    if Path(models.mimi).is_file():
        return Path(models.mimi)
    from huggingface_hub import hf_hub_download
    from moshi.models import loaders

    return Path(hf_hub_download(models.mimi, loaders.MIMI_NAME))


def load_mimi(models: ModelsConfig, device: str = "cpu", num_codebooks: int = 8):
    """Mimi through ``moshi.models.loaders.get_mimi``, in eval mode on ``device``."""
    from moshi.models import loaders

    return loaders.get_mimi(mimi_weights_file(models), device=device, num_codebooks=num_codebooks)


def load_whisper(models: ModelsConfig, device: str = "cpu"):
    """An openai-whisper model through ``whisper.load_model`` (a name or a local file)."""
    import whisper

    from .audio import ensure_ffmpeg_on_path

    _ensure_if_tiny(models, "whisper")
    ensure_ffmpeg_on_path()  # whisper.load_audio calls `ffmpeg` by name
    return whisper.load_model(models.whisper, device=device)


def text_tokenizer_file(models: ModelsConfig) -> Path:
    """The base model's SentencePiece file: from the local dir, or the hub repo."""
    _ensure_if_tiny(models, "lm")
    local = Path(models.lm) / TEXT_TOKENIZER_FILE
    if local.is_file():
        return local
    if Path(models.lm).is_dir():
        raise FileNotFoundError(
            f"{local} is missing: copy the base model's SentencePiece tokenizer.model there"
        )
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(models.lm, TEXT_TOKENIZER_FILE))


def load_text_tokenizer(models: ModelsConfig):
    """The base model's SentencePiece processor (ids ``[0, T)``; T is its piece count)."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(text_tokenizer_file(models)))


def lm_config(models: ModelsConfig):
    """The base LM's ``MistralConfig`` (config.json only: cheap, no weights)."""
    from transformers import AutoConfig

    _ensure_if_tiny(models, "lm")
    return AutoConfig.from_pretrained(models.lm)


def load_lm(models: ModelsConfig, device: str = "cpu", dtype: torch.dtype = torch.float32,
            attention_window: int | None = None, vocab_rows: int | None = None,
            keep_layers: list[int] | None = None, config=None):  # fmt: skip
    """The base ``MistralForCausalLM`` from a hub name or a local dir, loaded straight into
    ``dtype`` on ``device`` (weights stream from the safetensors files to the device: no
    full-precision copy in host RAM, 15 GB of host memory suffice for 7B).

    ``vocab_rows``: build the input and output tables with this many rows and fill the first
    ones from the checkpoint, a block at a time (extending the vocabulary without a second
    copy of both tables). ``attention_window``: for an LM without a sliding window of its own
    (Mistral-7B-v0.3), attend to the last this-many positions, so the KV cache stays bounded
    in generation; an LM with one keeps it. ``keep_layers``: build only these decoder layers
    (original indices, increasing) and load each from the checkpoint, so a pruned model never
    holds the layers it drops, not even while loading. ``config``: `lm_config`'s, when the
    caller has read it already."""
    from transformers import MistralForCausalLM
    from transformers.utils import logging as hf_logging

    config = config or lm_config(models)
    overrides = {}
    if attention_window and getattr(config, "sliding_window", None) is None:
        overrides["sliding_window"] = int(attention_window)
    resize = vocab_rows is not None and vocab_rows != config.vocab_size
    if resize:  # the two tables load fresh at the new size (transformers reports a mismatch)
        overrides.update(vocab_size=int(vocab_rows), ignore_mismatched_sizes=True)
    if keep_layers is not None:  # layers 0..k-1 load first, then the kept ones replace them
        overrides["num_hidden_layers"] = len(keep_layers)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bar = hf_logging.is_progress_bar_enabled()
    if models.profile == "tiny":  # loads in a blink: no progress bar in the notebooks' output
        hf_logging.disable_progress_bar()
    try:
        model = MistralForCausalLM.from_pretrained(models.lm, dtype=dtype,
                                                   device_map=str(device), **overrides)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    if resize:
        _load_table_rows(model, models.lm, config.vocab_size)
    if keep_layers is not None:
        _load_kept_layers(model, models.lm, keep_layers)
    return model


TABLES = {"model.embed_tokens.weight": "get_input_embeddings",
          "lm_head.weight": "get_output_embeddings"}  # fmt: skip


def _safetensors_files(lm: str, names=TABLES) -> dict[str, Path]:
    """Tensor name -> the safetensors file of ``lm`` (a local dir or a cached hub repo) that
    holds it, for ``names``."""
    import json

    def fetch(name: str) -> Path | None:
        local = Path(lm) / name
        if Path(lm).is_dir():
            return local if local.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(lm, name))
        except EntryNotFoundError:
            return None

    index = fetch("model.safetensors.index.json")
    if index is not None:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {f: fetch(f) for f in {weight_map[k] for k in names if k in weight_map}}
        return {k: files[weight_map[k]] for k in names if k in weight_map}
    single = fetch("model.safetensors")
    if single is None:
        raise FileNotFoundError(f"{lm} has no safetensors weights (model.safetensors or "
                                "model.safetensors.index.json)")  # fmt: skip
    return dict.fromkeys(names, single)


@torch.no_grad()
def _load_kept_layers(model, lm: str, kept: list[int]) -> None:
    """Load decoder layer ``kept[n]`` of the checkpoint into layer ``n`` of ``model``, one
    tensor at a time."""
    from safetensors import safe_open

    wanted = {}
    for new, old in enumerate(kept):
        if new != old:
            for name, p in model.model.layers[new].named_parameters():
                wanted[f"model.layers.{old}.{name}"] = p
    for name, path in _safetensors_files(lm, list(wanted)).items():
        with safe_open(str(path), framework="pt", device="cpu") as f:
            wanted[name].copy_(f.get_tensor(name))


@torch.no_grad()
def _load_table_rows(model, lm: str, rows: int, block: int = 4096) -> None:
    """Copy the checkpoint's ``rows`` rows of both tables into the first rows of ``model``'s
    (larger) tables, ``block`` rows at a time."""
    from safetensors import safe_open

    for name, path in _safetensors_files(lm).items():
        table = getattr(model, TABLES[name])().weight
        with safe_open(str(path), framework="pt", device="cpu") as f:
            part = f.get_slice(name)
            for start in range(0, rows, block):
                stop = min(rows, start + block)
                table[start:stop].copy_(part[start:stop])
