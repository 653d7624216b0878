"""Command line: ``python -m speechlm_utils <command>`` (or the ``speechlm`` script)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config


def cmd_info(args: argparse.Namespace) -> None:
    """Print the profile, the device and what fits it, ffmpeg, and the models: those chosen
    now and those the token root and runs recorded."""
    import json

    from .audio import ffmpeg_exe
    from .train import recipe_for_gpu

    models = _models(args)
    print(f"profile: {models.profile}")
    print(f"device:  {config.describe_device()}")
    print(f"ffmpeg:  {ffmpeg_exe()}")
    print(f"data:    {models.data_dir}")
    print("models (--lm/--mimi/--whisper, $SPEECHLM_LM/_MIMI/_WHISPER):")
    print("  " + models.describe().replace("\n", "\n  "))
    layouts = [models.data_dir / root / "layout.json" for root in ("tokens", "tokens_duplex")]
    recorded = [(path.parent.name, path) for path in layouts if path.exists()]
    recorded += [(f"run {p.parent.name}", p)
                 for p in sorted((models.data_dir / "runs").glob("*/run.json"))]
    for what, path in recorded:
        meta = json.loads(path.read_text())
        print(f"{what} in {path.parent}: made with lm {meta.get('lm')}, "
              f"mimi {meta.get('mimi')}, whisper {meta.get('whisper')}")
    print(recipe_for_gpu())


def cmd_prepare(args: argparse.Namespace) -> None:
    """Build the tiny profile's random-weight checkpoints (no-op when they exist)."""
    from .checkpoints import ensure_tiny_checkpoints

    models = config.ModelsConfig.from_profile("tiny", **_data_dir(args))
    for name, path in ensure_tiny_checkpoints(models).items():
        print(f"{name:8s} {path}")


def cmd_notebooks(args: argparse.Namespace) -> None:
    """Run every numbered notebook in order, headless; save executed copies."""
    from .notebooks import list_notebooks, run_notebooks

    if not list_notebooks(args.dir):
        print(f"no notebooks in {args.dir}")
        return
    results = run_notebooks(args.dir, args.out)
    print(f"\n{len(results)} notebooks ran; executed copies in {args.out}/")
    data_dir = config.default_data_dir(args.profile)
    print(f"stage outputs under {data_dir}/ (index, chunks, tokens, runs)")


def cmd_index(args: argparse.Namespace) -> None:
    """Stage 01: index videos from search terms, or from local media (--source)."""
    from . import index
    from .manifest import parse_shard

    cfg = _config(config.IndexConfig, args, workers=args.workers, per_query=args.per_query,
                  min_duration_s=args.min_duration_s, max_duration_s=args.max_duration_s,
                  requests_per_s=args.rps)  # fmt: skip
    out = args.out or cfg.data_dir / "index.jsonl"
    source = args.source or "youtube"
    if source == "youtube":
        terms = index.read_terms(args.queries or config.search_terms_file(cfg.data_dir))
        summary = index.run_index(cfg, terms, out, shard=parse_shard(args.shard))
    elif source == "demo":
        summary = index.index_demo(cfg, out)
    elif source.startswith("local:"):
        summary = index.index_urls(cfg, index.local_media_urls(source[6:]), out, source="local")
    elif source.startswith("urls:"):
        summary = index.index_urls(cfg, index.read_urls(source[5:]), out, source="url")
    else:
        raise SystemExit(f"--source {source!r}: use youtube, demo, local:DIR or urls:FILE")
    print(summary)
    print(f"index: {out}")


def cmd_scrape(args: argparse.Namespace) -> None:
    """Stage 02: download audio-only streams and cut them into chunks by segment copy."""
    from . import scrape
    from .index import load_index
    from .manifest import parse_shard

    cfg = _config(config.ScrapeConfig, args, workers=args.workers, chunk_s=args.chunk_s,
                  max_hours=args.max_hours, cookies_file=args.cookies, proxy=args.proxy,
                  rate_limit_bps=args.rate_limit, speech_filter=args.speech_filter or None,
                  captions=args.captions or None, diarize=args.diarize or None)  # fmt: skip
    index_files = args.index or [cfg.data_dir / "index.jsonl"]
    entries = load_index(*index_files)
    if not entries:
        raise SystemExit(f"no entries in {', '.join(map(str, index_files))}: run `index` first")
    out = args.out or cfg.data_dir / "chunks"
    shard = parse_shard(args.shard)
    with scrape.demo_server_if_needed(entries):
        summary = scrape.run_scrape(cfg, entries, out, shard=shard,
                                    retry_failed=args.retry_failed)  # fmt: skip
    print(summary)
    print(f"chunks: {out}   manifest: {scrape.manifest_path(out, shard)}")


def cmd_diarize(args: argparse.Namespace) -> None:
    """Who speaks when, for scraped videos without speaker turns (pyannote.audio; for the
    duplex layout): turns into each chunks.json, resumable, --shard and torchrun ranks."""
    from .manifest import parse_shard
    from .speakers import Diarizer, run_diarize

    cfg = _config(config.ScrapeConfig, args)
    rank, world, local_rank = config.distributed_env()
    device = f"cuda:{local_rank}" if config.pick_device() == "cuda" else config.pick_device()
    chunks = args.chunks or cfg.data_dir / "chunks"
    try:
        diarizer = Diarizer(config.hf_token(), device)
    except RuntimeError as err:
        raise SystemExit(str(err)) from err
    summary = run_diarize(chunks, diarizer, parse_shard(args.shard), (rank, world),
                          progress=rank == 0)  # fmt: skip
    print(summary)


def cmd_tokenize(args: argparse.Namespace) -> None:
    """Stage 03: Mimi codes + word timestamps -> interleaved token files."""
    from .manifest import parse_shard
    from .preprocess import AssistantNameError, manifest_path, run_tokenize

    cfg = _config(config.TokenizeConfig, args, batch_size=args.batch_size, workers=args.workers,
                  num_codebooks=args.num_codebooks, text_lead_s=args.text_lead_s,
                  text_source=args.text_source, user_codebooks=args.user_codebooks,
                  assistant=args.assistant, overlap=args.overlap,
                  max_video_s=args.max_video_s)  # fmt: skip
    models = _models(args)
    rank, world, local_rank = config.distributed_env()  # torchrun: one process per GPU
    shard = parse_shard(args.shard)
    device = f"cuda:{local_rank}" if config.pick_device() == "cuda" else config.pick_device()
    chunks = args.chunks or cfg.data_dir / "chunks"
    out = args.out or cfg.data_dir / ("tokens_duplex" if cfg.user_codebooks else "tokens")
    try:
        summary = run_tokenize(cfg, models, chunks, out, shard=shard, rank=(rank, world),
                               device=device, progress=rank == 0)  # fmt: skip
    except AssistantNameError as err:  # a mistyped name: the message says who speaks there
        raise SystemExit(str(err)) from err
    print(f"[shard {shard[0]}/{shard[1]}, rank {rank}/{world} on {device}]\n{summary}")
    print(f"tokens: {out}   manifest: {manifest_path(out, shard, (rank, world))}")


def cmd_train(args: argparse.Namespace) -> None:
    """Stage 05: finetune the LM on the token stream (torchrun for several GPUs)."""
    from .train import Trainer, make_sample_fn

    weights = tuple(float(x) for x in args.loss_weights.split(",")) if args.loss_weights else None
    cfg = _config(config.TrainConfig, args, keep_every=args.keep_every, max_steps=args.max_steps,
                  epochs=args.epochs, save_every=args.save_every, grad_accum=args.grad_accum,
                  seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                  wandb_mode=args.wandb, fsdp=args.fsdp or None, loss_weights=weights,
                  lora_r=args.lora_r, memory_check=False if args.no_memory_check else None,
                  eval_every=args.eval_every, sample_every=args.sample_every,
                  dtype=args.dtype)  # fmt: skip
    if args.keep_every and args.lora_r is None:
        cfg = cfg.replace(lora_r=None)  # pruning alone: train the kept layers
    models = _models(args)  # the LM the tokens were made for, unless --lm chose another
    tokens = args.tokens or cfg.data_dir / "tokens"
    run = args.run or cfg.data_dir / "runs" / "default"
    trainer = Trainer(cfg, models, tokens, run)  # under torchrun: leaves its group at exit
    result = trainer.fit(resume=args.resume, sample_fn=make_sample_fn(trainer.models),
                         stop_after=args.stop_after)  # fmt: skip
    if trainer.rank == 0:
        print(f"{result.steps} steps; loss {result.last('loss')}, val {result.last('val_loss')}")
        print(f"run: {run}")


def cmd_chat(args: argparse.Namespace) -> None:
    """Stage 06: answer an audio file with the trained model (speech in, speech out)."""
    import json

    from .align import Aligner
    from .chat import ChatSession, decode_user_audio, wav_bytes
    from .codec import Codec
    from .duplex import not_duplex_message
    from .generate import Sampling
    from .train import load_run, run_models

    cfg = config.ChatConfig.from_profile(args.profile, **_data_dir(args))
    device = config.pick_device()
    try:  # which layout, before loading 7B
        spec = json.loads((Path(args.run) / "run.json").read_text())["layout"]
    except (OSError, KeyError, ValueError) as err:
        raise SystemExit(f"{args.run} is not a training run (no run.json): {err}") from err
    duplex = bool(spec.get("user_codebooks"))
    if duplex and not args.duplex:
        raise SystemExit(f"{args.run} was trained on the duplex layout (two speaker streams): "
                         "talk to it with --duplex")  # fmt: skip
    window = args.attention_window or cfg.attention_window
    if args.duplex and not duplex:
        raise SystemExit(not_duplex_message(str(args.run)))
    model, tokenizer = load_run(args.run, _models(args), device, attention_window=window)
    models = run_models(args.run, _models(args))  # the codec the run's tokens were made with
    codec = Codec.load(models, tokenizer.layout.num_codebooks, device)
    if args.duplex:
        return _chat_duplex(args, cfg, model, tokenizer, codec)
    if args.decode:
        decode = args.decode
    elif cfg.decode == "auto":  # one reply: compiling would cost more than it saves
        decode = "static" if device.startswith("cuda") else "eager"
    else:
        decode = cfg.decode
    session = ChatSession(model, tokenizer, codec, Aligner.load(models, device), decode=decode)
    try:
        wav24, wav16 = decode_user_audio(Path(args.audio).read_bytes(), Path(args.audio).name)
    except (OSError, ValueError) as err:
        raise SystemExit(str(err)) from err
    session.say(wav24, wav16)
    sampling = Sampling.from_config(cfg, args.temperature, args.seed)
    response = session.reply(args.max_s or cfg.max_response_s, sampling)
    Path(args.out).write_bytes(wav_bytes(response.audio))
    print(f"you said: {session.turns[0]['text'] or '(no words)'}")
    print(f"model: {response.text or '(no words)'}")
    print(f"{response.audio_s:.1f} s of audio in {response.seconds:.1f} s (first audio after "
          f"{response.first_audio_s:.2f} s, stopped on {response.stopped}) -> {args.out}")


def _chat_duplex(args, cfg, model, tokenizer, codec) -> None:
    """``chat --duplex``: play the user's file into the model group by group (in real time
    unless --no-realtime); a stereo wav (you left, the model right) and its text channel."""
    from .chat import UserInputError
    from .duplex import DuplexSession, load_user_file, run_file, timing_verdict, write_outputs
    from .generate import Sampling

    try:
        wav24 = load_user_file(Path(args.audio).name, Path(args.audio).read_bytes())
    except (OSError, UserInputError) as err:
        raise SystemExit(str(err)) from err
    sampling = Sampling.from_config(cfg, args.temperature, args.seed)
    # auto: compiled on a GPU (a conversation is many groups: compiling pays off)
    session = DuplexSession(model, tokenizer, codec, sampling, decode=args.decode or "auto")
    result = run_file(session, wav24, realtime=not args.no_realtime, progress=True)
    wav, text = write_outputs(result, args.out)
    t = result.timing()
    print(f"{len(result.steps)} groups of {t['group_s'] * 1000:.0f} ms: per group listen "
          f"{t['mean_encode_s'] * 1000:.0f} + think and talk {t['mean_generate_s'] * 1000:.0f} + "
          f"speak {t['mean_decode_s'] * 1000:.0f} = {t['mean_compute_s'] * 1000:.0f} ms "
          f"(worst {t['max_compute_s'] * 1000:.0f} ms): {timing_verdict(t)}")
    if "max_lag_s" in t:
        print(f"played in real time: each reply group came at most {t['max_lag_s']:.2f} s "
              "after its input ended")
    words = " ".join(w for _, w in result.text_timeline())
    print(f"model: {words or '(no words)'}")
    print(f"-> {wav} (you left, the model right), {text} (the model's text channel)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Stage 07: held-out loss per kind, likelihood suites, sanity and text-speech consistency
    for a run's checkpoints, into RUN/eval.jsonl."""
    from .evaluate import evaluate_run

    sources = {}
    for spec in args.source or []:
        name, _, where = spec.partition("=")
        if not where:
            raise SystemExit(f"--source {spec!r}: use SUITE=DIR (or SUITE=hub/id)")
        sources[name] = where
    cfg = _config(config.EvalConfig, args, checkpoints=args.checkpoints, limit=args.limit,
                  max_batch_tokens=args.max_batch_tokens)  # fmt: skip
    result = evaluate_run(args.run, args.suite or cfg.suites, cfg.checkpoints, _models(args),
                          args.tokens, limit=cfg.limit, sources=sources,
                          consistency_prompts=cfg.consistency_prompts,
                          max_batch_tokens=cfg.max_batch_tokens)  # fmt: skip
    print(result.table())
    print(f"results: {Path(args.run) / 'eval.jsonl'}")


def _models(args: argparse.Namespace) -> config.ModelsConfig:
    """The models: ``--lm``/``--mimi``/``--whisper``, else the environment, else the profile's."""
    return config.ModelsConfig.from_profile(args.profile, **_data_dir(args),
                                            lm=getattr(args, "lm", None),
                                            mimi=getattr(args, "mimi", None),
                                            whisper=getattr(args, "whisper", None))  # fmt: skip


def _data_dir(args: argparse.Namespace) -> dict:
    return {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else {}


def _config(cls, args: argparse.Namespace, **fields):
    """``cls.from_profile`` with the CLI's profile and data dir, and the options given."""
    overrides = {k: v for k, v in fields.items() if v is not None}
    return cls.from_profile(args.profile, **_data_dir(args), **overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechlm", description=__doc__)
    parser.add_argument("--profile", choices=config.PROFILES, default=None,
                        help="tiny or full (default: $SPEECHLM_PROFILE, else by hardware)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data root (default: $SPEECHLM_DATA_DIR, else ./data of the checkout)")
    sub = parser.add_subparsers(dest="command", required=True)
    # every stage that loads a model; unset, later stages follow what earlier ones recorded
    chosen = argparse.ArgumentParser(add_help=False)
    chosen.add_argument("--lm", help="base LM: hub name or local dir (default $SPEECHLM_LM, "
                        "else what the tokens or run recorded, else the profile's)")
    chosen.add_argument("--mimi", help="Mimi: hub repo or local weights file ($SPEECHLM_MIMI)")
    chosen.add_argument("--whisper", help="Whisper: model name or local checkpoint file "
                        "($SPEECHLM_WHISPER)")

    sub.add_parser("info", help=cmd_info.__doc__, parents=[chosen]).set_defaults(func=cmd_info)
    sub.add_parser("prepare", help=cmd_prepare.__doc__).set_defaults(func=cmd_prepare)
    ix = sub.add_parser("index", help=cmd_index.__doc__)
    ix.add_argument("--queries", type=Path, help="search terms file (default data/searches.txt)")
    ix.add_argument("--out", type=Path, help="index file (default data/index.jsonl)")
    ix.add_argument("--source", help="youtube (default), demo, local:DIR or urls:FILE")
    ix.add_argument("--workers", type=int)
    ix.add_argument("--per-query", type=int)
    ix.add_argument("--min-duration-s", type=float)
    ix.add_argument("--max-duration-s", type=float)
    ix.add_argument("--rps", type=float, help="requests per second, across all threads")
    ix.add_argument("--shard", help="i/n: take every n-th term (run shards into separate --out)")
    ix.set_defaults(func=cmd_index)

    sc = sub.add_parser("scrape", help=cmd_scrape.__doc__)
    sc.add_argument("--index", type=Path, nargs="+", help="index file(s), e.g. shards")
    sc.add_argument("--out", type=Path, help="chunk root (default data/chunks)")
    sc.add_argument("--workers", type=int)
    sc.add_argument("--chunk-s", type=float)
    sc.add_argument("--shard", help="i/n: take the videos whose id hashes to shard i")
    sc.add_argument("--retry-failed", action="store_true", help="redo videos that failed")
    sc.add_argument("--max-hours", type=float, help="stop after this much audio in all")
    sc.add_argument("--speech-filter", action="store_true",
                    help="drop chunks with little speech (silero-vad)")
    sc.add_argument("--cookies", help="cookies.txt for yt-dlp")
    sc.add_argument("--proxy", help="proxy URL for yt-dlp")
    sc.add_argument("--rate-limit", type=int, help="download bytes/s per video")
    sc.add_argument("--captions", action="store_true",
                    help="also fetch YouTube captions (json3/vtt) for the text channel")
    sc.add_argument("--diarize", action="store_true",
                    help="who speaks when, for the duplex layout, from pyannote.audio for the "
                         "videos whose transcript labels no speakers (needs pyannote.audio and "
                         "$HF_TOKEN)")
    sc.set_defaults(func=cmd_scrape)

    dz = sub.add_parser("diarize", help=cmd_diarize.__doc__)
    dz.add_argument("--chunks", type=Path, help="chunk root (default data/chunks)")
    dz.add_argument("--shard", help="i/n of the videos; under torchrun split again per rank")
    dz.set_defaults(func=cmd_diarize)

    tk = sub.add_parser("tokenize", help=cmd_tokenize.__doc__, parents=[chosen])
    tk.add_argument("--chunks", type=Path, help="chunk root (default data/chunks)")
    tk.add_argument("--out", type=Path,
                    help="token root (default data/tokens, data/tokens_duplex with "
                         "--user-codebooks); one root holds one configuration")
    tk.add_argument("--batch-size", type=int)
    tk.add_argument("--workers", type=int, help="threads decoding chunks (ffmpeg)")
    tk.add_argument("--num-codebooks", type=int)
    tk.add_argument("--text-lead-s", type=float)
    tk.add_argument("--text-source", choices=["whisper", "captions", "sidecar"])
    tk.add_argument("--user-codebooks", type=int,
                    help="the duplex layout (stage 08): the user's codebooks per frame after the "
                         "assistant's (1 = semantic only .. K); needs speaker turns")
    tk.add_argument("--assistant",
                    help="duplex: who the model learns to be: most_talkative (default), "
                         "least_talkative, a speaker's name, or both (each of the two most "
                         "talkative once: two examples per video)")
    tk.add_argument("--overlap", choices=["both", "assistant", "user"],
                    help="duplex: whose track keeps speech where both talk (default both)")
    tk.add_argument("--max-video-s", type=float,
                    help="only each video's first seconds, in whole chunks (a quick look)")
    tk.add_argument("--shard", help="i/n of the videos; under torchrun split again per rank")
    tk.set_defaults(func=cmd_tokenize)

    tr = sub.add_parser("train", help=cmd_train.__doc__, parents=[chosen])
    tr.add_argument("--tokens", type=Path, help="token root (default data/tokens)")
    tr.add_argument("--run-dir", "--run", dest="run", type=Path,
                    help="run dir (default data/runs/default); under torchrun spell it --run-dir")
    tr.add_argument("--lora-r", type=int, help="LoRA rank")
    tr.add_argument("--keep-every", type=int,
                    help="prune: keep every n-th layer (alone: train the kept layers fully)")
    tr.add_argument("--max-steps", type=int)
    tr.add_argument("--save-every", type=int, help="checkpoint every N steps")
    tr.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    tr.add_argument("--stop-after", type=int,
                    help="stop after step N (checkpoint, no final/; the schedule unchanged)")
    tr.add_argument("--epochs", type=float,
                    help="passes over the data: sizes steps, warmup and checkpoints to it")
    tr.add_argument("--seq-len", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--loss-weights", help="text,pad,semantic,acoustic[,user] e.g. 1,0.1,1,0.5 "
                    "(user: the duplex layout's user stream, default 0)")
    tr.add_argument("--wandb", choices=["online", "offline", "disabled"])
    tr.add_argument("--fsdp", action="store_true", help="shard the model under torchrun")
    tr.add_argument("--eval-every", type=int, help="validation loss every N steps")
    tr.add_argument("--sample-every", type=int,
                    help="an audio sample (W&B) and its text (metrics.jsonl) every N steps")
    tr.add_argument("--dtype", choices=["bf16", "fp16", "fp32"],
                    help="the frozen base's dtype (default: bf16 where native, fp16 on older "
                         "GPUs, fp32 on CPUs); what trains is fp32")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    tr.add_argument("--no-memory-check", action="store_true",
                    help="train even when the memory plan says the GPU is too small")
    tr.set_defaults(func=cmd_train)

    ch = sub.add_parser("chat", help=cmd_chat.__doc__, parents=[chosen])
    ch.add_argument("--run-dir", "--run", dest="run", type=Path, required=True)
    ch.add_argument("--audio", type=Path, required=True,
                    help="your question (any audio file); with --duplex, your side of a "
                         "conversation, played into the model")
    ch.add_argument("--out", type=Path, default=Path("reply.wav"),
                    help="the reply; with --duplex a stereo wav (you left, the model right) "
                         "and OUT.txt, the model's text channel with times")
    ch.add_argument("--duplex", action="store_true",
                    help="full duplex (a run trained on the duplex layout, notebook 08): the "
                         "model listens while it talks, 400 ms at a time")
    ch.add_argument("--no-realtime", action="store_true",
                    help="with --duplex: play the file as fast as the model goes, not in real "
                         "time")
    ch.add_argument("--max-s", type=float, help="longest reply in seconds")
    ch.add_argument("--temperature", type=float, help="for text and audio alike")
    ch.add_argument("--seed", type=int, default=None)
    ch.add_argument("--attention-window", type=int,
                    help="tokens attended to by an LM without a sliding window (default 4096)")
    ch.add_argument("--decode", choices=("auto", "eager", "static", "compiled"),
                    help="default: static on a GPU (one reply per run, so compiling would "
                         "cost more than it saves), eager on a CPU; static: the ring-cache "
                         "decoder; compiled: its step under torch.compile (CUDA graphs); auto: "
                         "compiled on a CUDA GPU; eager: transformers' forward (the reference)")
    ch.set_defaults(func=cmd_chat)

    ev = sub.add_parser("evaluate", help=cmd_evaluate.__doc__, parents=[chosen])
    ev.add_argument("--run-dir", "--run", dest="run", type=Path, required=True)
    ev.add_argument("--suite", action="append",
                    help="loss, sanity, consistency, swuggy, sblimp, sstorycloze, tstorycloze, "
                         "salmon or demo; repeat for several (default: all of them but demo; "
                         "tiny profile: loss, sanity, consistency and demo)")
    ev.add_argument("--checkpoints", choices=("all", "last"),
                    help="every kept checkpoint (the default) or the last")
    ev.add_argument("--tokens", type=Path,
                    help="the token root the run trained on (default: the one it recorded)")
    ev.add_argument("--limit", type=int, help="score only the first N items of each suite")
    ev.add_argument("--max-batch-tokens", type=int,
                    help="tokens per scoring forward (default 32768 on a GPU, 4096 elsewhere; "
                         "halved by itself when a batch runs out of GPU memory)")
    ev.add_argument("--source", action="append", metavar="SUITE=DIR",
                    help="read a suite from a local copy (save_to_disk or parquet) instead of "
                         "the hub")
    ev.set_defaults(func=cmd_evaluate)

    nb = sub.add_parser("notebooks", help=cmd_notebooks.__doc__)
    nb.add_argument("--dir", type=Path, default=Path("notebooks"))
    nb.add_argument("--out", type=Path, default=Path("data/executed"))
    nb.set_defaults(func=cmd_notebooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    if "torch" in sys.modules:  # a torchrun rank that trained: ends here (train.py says why)
        from .train import end_distributed_process

        end_distributed_process()
    return 0


if __name__ == "__main__":
    sys.exit(main())
