"""Command line: ``python -m speechlm_utils <command>`` (or the ``speechlm`` script)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config


def cmd_info(args: argparse.Namespace) -> None:
    """Print the profile, the device, ffmpeg and where the models come from."""
    from .audio import ffmpeg_exe

    models = config.ModelsConfig.from_profile(args.profile, **_data_dir(args))
    print(f"profile: {models.profile}")
    print(f"device:  {config.describe_device()}")
    print(f"ffmpeg:  {ffmpeg_exe()}")
    print(models)


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
    data_dir = config.default_data_dir()
    print(f"stage outputs under {data_dir}/ (index, chunks, tokens, runs)")


def _data_dir(args: argparse.Namespace) -> dict:
    return {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechlm", description=__doc__)
    parser.add_argument("--profile", choices=config.PROFILES, default=None,
                        help="tiny or full (default: $SPEECHLM_PROFILE, else by hardware)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data root (default: $SPEECHLM_DATA_DIR, else ./data of the checkout)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help=cmd_info.__doc__).set_defaults(func=cmd_info)
    sub.add_parser("prepare", help=cmd_prepare.__doc__).set_defaults(func=cmd_prepare)
    nb = sub.add_parser("notebooks", help=cmd_notebooks.__doc__)
    nb.add_argument("--dir", type=Path, default=Path("notebooks"))
    nb.add_argument("--out", type=Path, default=Path("data/executed"))
    nb.set_defaults(func=cmd_notebooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
