from pathlib import Path

import pytest

from speechlm_utils import config
from speechlm_utils.config import (
    ChatConfig,
    EvalConfig,
    IndexConfig,
    ModelsConfig,
    ScrapeConfig,
    StageConfig,
    TokenizeConfig,
    TrainConfig,
)

STAGE_CONFIGS = [ModelsConfig, IndexConfig, ScrapeConfig, TokenizeConfig, TrainConfig, ChatConfig,
                 EvalConfig]


@pytest.mark.parametrize("value", ["tiny", "full", "TINY", " full "])
def test_env_picks_profile(monkeypatch, value):
    monkeypatch.setenv(config.PROFILE_ENV, value)
    assert config.resolve_profile() == value.strip().lower()


@pytest.mark.parametrize("has_cuda,expected", [(True, "full"), (False, "tiny")])
def test_default_profile_follows_hardware(monkeypatch, has_cuda, expected):
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)
    monkeypatch.setattr(config, "cuda_available", lambda: has_cuda)
    assert config.resolve_profile() == expected


def test_argument_beats_environment(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "full")
    assert config.resolve_profile("tiny") == "tiny"


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "huge")
    with pytest.raises(ValueError, match="SPEECHLM_PROFILE.*tiny, full"):
        config.resolve_profile()


def test_tiny_and_full_differ_where_they_should(tmp_path):
    tiny = IndexConfig.from_profile("tiny", data_dir=tmp_path)
    full = IndexConfig.from_profile("full", data_dir=tmp_path)
    assert (tiny.profile, full.profile) == ("tiny", "full")
    assert full.min_duration_s == 30 * 60
    assert tiny.min_duration_s < 30  # the demo episodes are under a minute
    assert IndexConfig.from_profile("tiny", min_duration_s=5.0).min_duration_s == 5.0


def test_models_full_uses_hub_names_tiny_uses_local_files(tmp_path):
    full = ModelsConfig.from_profile("full", data_dir=tmp_path)
    assert full.lm == "mistralai/Mistral-7B-v0.1"
    assert full.whisper == "small.en"
    tiny = ModelsConfig.from_profile("tiny", data_dir=tmp_path)
    for value in (tiny.lm, tiny.mimi, tiny.whisper):
        assert Path(value).is_relative_to(tmp_path / "models" / "tiny")
    other = ModelsConfig.from_profile("full", lm="mistralai/Mistral-7B-v0.3")
    assert other.lm == "mistralai/Mistral-7B-v0.3"


def test_models_are_chosen_on_purpose_else_follow_the_record(tmp_path, monkeypatch):
    for env in config.MODEL_ENV.values():
        monkeypatch.delenv(env, raising=False)
    default = ModelsConfig.from_profile("full", data_dir=tmp_path)
    assert default.chosen == ()
    monkeypatch.setenv("SPEECHLM_MIMI", str(tmp_path / "mimi.safetensors"))
    chosen = ModelsConfig.from_profile("full", data_dir=tmp_path, lm="mistralai/Mistral-7B-v0.3",
                                       whisper=None)  # a flag that was not given
    assert chosen.lm == "mistralai/Mistral-7B-v0.3" and chosen.mimi.endswith("mimi.safetensors")
    assert chosen.chosen == ("lm", "mimi") and chosen.whisper == "small.en"
    local = tmp_path / "my-whisper.pt"
    local.write_bytes(b"")
    recorded = {"lm": "mistralai/Mistral-7B-v0.1", "mimi": "kyutai/other",
                "whisper": str(local)}  # fmt: skip
    followed = chosen.follow(recorded)
    assert followed.lm == "mistralai/Mistral-7B-v0.3"  # chosen on purpose: kept
    assert followed.mimi == chosen.mimi
    assert followed.whisper == str(local)  # not chosen: what the earlier stage used
    assert default.follow({"lm": "/gone/mistral", "whisper": "medium.en"}).lm == default.lm
    assert default.follow({"whisper": "medium.en"}).whisper == "medium.en"  # a hub name
    assert "chosen" in chosen.describe() and "full default" in chosen.describe()


def test_every_loading_stage_takes_model_flags(monkeypatch):
    from speechlm_utils.__main__ import _models, build_parser

    for env in config.MODEL_ENV.values():
        monkeypatch.delenv(env, raising=False)
    parser = build_parser()
    for stage in (["info"], ["tokenize"], ["train"], ["chat", "--run", "r", "--audio", "a"]):
        args = parser.parse_args(["--profile", "full", *stage, "--lm", "my/lm", "--mimi",
                                  "/m.safetensors", "--whisper", "base.en"])  # fmt: skip
        models = _models(args)
        assert (models.lm, models.mimi, models.whisper) == ("my/lm", "/m.safetensors", "base.en")
        assert models.chosen == ("lm", "mimi", "whisper")
    args = parser.parse_args(["train", "--save-every", "5", "--stop-after", "12"])
    assert (args.save_every, args.stop_after) == (5, 12)
    monkeypatch.setenv("SPEECHLM_LM", "env/lm")
    assert _models(parser.parse_args(["--profile", "full", "train"])).lm == "env/lm"
    assert _models(parser.parse_args(["--profile", "full", "train", "--lm", "x/y"])).lm == "x/y"


@pytest.mark.parametrize("cls", STAGE_CONFIGS)
@pytest.mark.parametrize("profile", config.PROFILES)
def test_every_stage_has_a_config_per_profile(cls, profile, tmp_path):
    cfg = cls.from_profile(profile, data_dir=tmp_path)
    assert isinstance(cfg, StageConfig)
    assert cfg.profile == profile and cfg.data_dir == tmp_path.resolve()
    assert type(cfg).__name__ in str(cfg)


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path))
    assert TokenizeConfig.from_profile("full").data_dir == tmp_path.resolve()
    assert TokenizeConfig.from_profile("tiny").data_dir == tmp_path.resolve() / "tiny"


def test_profiles_never_share_generated_data(monkeypatch, tmp_path):
    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path))
    tiny, full = (ModelsConfig.from_profile(p) for p in ("tiny", "full"))
    assert tiny.data_dir != full.data_dir and tiny.tiny_dir.is_relative_to(tiny.data_dir)
    assert config.search_terms_file(tiny.data_dir).read_text().strip()  # the shipped list


def test_data_dir_defaults_to_the_checkout(monkeypatch):
    monkeypatch.delenv(config.DATA_DIR_ENV, raising=False)
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo / "tests")
    assert config.default_data_dir("full") == repo / "data"
    assert config.default_data_dir("tiny") == repo / "data" / "tiny"


def test_pick_device_on_this_machine():
    import torch

    device = config.pick_device()
    assert device in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert config.pick_dtype(device) == torch.float32


def test_bf16_only_where_native(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # a T4: bf16 "supported" only by emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                        including_emulation)  # fmt: skip
    assert not config.native_bf16("cuda")
    assert config.pick_dtype("cuda") == torch.float16  # a T4: fp16 (training scales the loss)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert config.native_bf16("cuda:0") and config.pick_dtype("cuda") == torch.bfloat16
    assert config.pick_dtype("cpu") == torch.float32


def test_a_local_model_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "models" / "my-mistral").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    models = ModelsConfig.from_profile("full", data_dir=tmp_path, lm="models/my-mistral")
    assert models.lm == str(tmp_path / "models" / "my-mistral")  # not a hub name elsewhere
