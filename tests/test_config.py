"""The one settings schema: defaults, validation, TOML, CLI flags."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from live.cli import to_toml
from live.checkpoints import SAM2_MODELS
from live.config import (SAM2_SIZES, EngineSettings, Settings, SettingsError, add_cli_arguments,
                         check_engine_setting, load_toml, needs_new_engine, parse_background,
                         schema, settings_from_args)


def parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_defaults_are_valid() -> None:
    settings = Settings()
    settings.validate()
    assert settings.merged({}) == settings


@pytest.mark.parametrize("patch, message", [
    ({"matte": {"feather": -1}}, "matte.feather must be between"),
    ({"matte": {"feather": "wide"}}, "must be a number"),
    ({"matte": {"feather": 2.5}}, "whole number"),
    ({"matte": {"feather": True}}, "must be a number"),
    ({"matte": {"nope": 1}}, "unknown setting matte.nope"),
    ({"nope": {}}, "unknown settings section"),
    ({"matte": 3}, "must be an object"),
    ({"background": {"color": "green"}}, "#RRGGBB"),
    ({"background": {"mode": "plaid"}}, "must be one of"),
    ({"background": {"mode": "image"}}, "needs background.image"),
    ({"engine": {"image_size": 500}}, "multiple of 32"),
    ({"server": {"host": "0.0.0.0"}}, "--allow-remote"),
    ({"source": {"fps": float("nan")}}, "finite"),
])
def test_bad_values_name_the_setting(patch: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings().merged(patch)


def test_merge_returns_a_new_object() -> None:
    base = Settings()
    new = base.merged({"matte": {"feather": 9}, "source": {"loop": True}})
    assert new.matte.feather == 9 and new.source.loop is True
    assert new is not base and base == Settings()  # the original is left as it was
    assert new.server.allow_remote is False
    assert Settings().merged({"server": {"host": "0.0.0.0", "allow_remote": True}}).server.host \
        == "0.0.0.0"


def test_background_shorthand() -> None:
    assert parse_background("#112233") == {"mode": "color", "color": "#112233"}
    assert parse_background("beach.jpg") == {"mode": "image", "image": "beach.jpg"}
    assert parse_background("waves.mp4")["mode"] == "video"
    assert parse_background("blur:40") == {"mode": "blur", "blur": 40}
    with pytest.raises(SettingsError, match="expected blur"):
        parse_background("beach.txt")


def test_cli_flags_override_config_file_which_overrides_defaults(tmp_path) -> None:
    cfg = tmp_path / "live.toml"
    cfg.write_text('[matte]\nfeather = 9\n[background]\nmode = "color"\ncolor = "#ff0000"\n')
    settings = parse("--config", str(cfg), "--feather", "2", "--source", "synthetic")
    assert settings.matte.feather == 2                 # flag beats file
    assert settings.background.color == "#ff0000"      # file beats default
    assert settings.source.spec == "synthetic"
    assert settings.engine == Settings().engine        # untouched section keeps defaults
    assert parse("--background", "#00ff00").background.mode == "color"
    assert parse("--no-loop").source.loop is False
    assert parse("--source-realtime").source.realtime is True


def test_bad_config_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[matte\nfeather = 1")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_toml(tmp_path / "missing.toml")


def test_every_field_has_help_and_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    flags = {a.dest for a in parser._actions}
    for section in dataclasses.fields(Settings):
        for f in dataclasses.fields(section.default_factory()):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no help"
            assert f"set__{section.name}__{f.name}" in flags


def test_dumped_toml_loads_back_to_the_same_settings(tmp_path) -> None:
    settings = Settings().merged({"background": {"mode": "color", "color": "#123456"},
                                  "matte": {"smoothing": "ema"}})
    path = tmp_path / "dump.toml"
    path.write_text(to_toml(settings))
    assert load_toml(path) == settings


def test_only_settings_marked_rebuild_need_a_new_engine() -> None:
    old = EngineSettings()
    for name, value in [("sam2_model", "small"), ("image_size", 512), ("device", "cpu"),
                        ("max_cond_frames", 8), ("selfie_model", "square")]:
        assert needs_new_engine(old, dataclasses.replace(old, **{name: value})), name
    for name, value in [("reanchor_iou", 0.5), ("reanchor_frames", 3), ("subjects", "main")]:
        assert not needs_new_engine(old, dataclasses.replace(old, **{name: value})), name


def test_the_sam2_sizes_are_the_checkpoint_list() -> None:
    choices = schema(("engine",))["engine"]["sam2_model"]["choices"]
    assert choices == list(SAM2_SIZES) == list(SAM2_MODELS)
    with pytest.raises(SettingsError, match="one of"):
        Settings().merged({"engine": {"sam2_model": "huge"}})


def test_a_bare_engine_value_is_checked_by_the_schema_rule() -> None:
    assert check_engine_setting("image_size", 512) == 512
    for bad, message in [(500, "multiple of 32"), (32, "between 64 and 2048"),
                         (True, "must be a number")]:
        with pytest.raises(SettingsError, match=message):
            check_engine_setting("image_size", bad)


@pytest.mark.parametrize("patch", [
    {"background": {"color": "#00b140\n"}},   # "$" would have matched before the newline
    {"background": {"color": " #00b140"}},
    {"matte": {"feather": " 5 "}},              # int() takes all of these
    {"matte": {"feather": "5_0"}},
    {"matte": {"feather": "\u0663"}},          # Arabic-Indic three
    {"matte": {"feather": "5"}},                # a number is a JSON number, not text
    {"source": {"loop": "yes"}},
    {"background": {"mode": ["blur"]}},
])
def test_control_values_are_json_types_exactly(patch: dict) -> None:
    with pytest.raises(SettingsError):
        Settings().merged(patch)


@pytest.mark.parametrize("flag", [" 5 ", "5_0", "\u0663", "5.5", "0x5"])
def test_cli_numbers_are_plain_ascii_decimals(flag: str) -> None:
    with pytest.raises(SettingsError, match="matte.feather"):
        parse("--feather", flag)
    assert parse("--feather", "5").matte.feather == 5
    assert parse("--source-fps", "12.5").source.fps == 12.5
    assert parse("--engine-image-size", "256").engine.image_size == 256
    with pytest.raises(SettingsError, match="blur"):
        parse("--background", "blur:\u0663")


def test_errors_never_echo_megabytes() -> None:
    huge = "x" * 900_000
    for patch in ({"matte": {huge: 1}}, {huge: {}}, {"background": {"mode": huge}},
                  {"background": {"color": huge[:4000]}}, {"matte": {"feather": huge}}):
        with pytest.raises(SettingsError) as err:
            Settings().merged(patch)
        assert len(str(err.value)) < 400, str(err.value)[:100]
