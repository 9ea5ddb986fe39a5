"""Settings are validated when they load: each bad value fails naming the field, the value and
where it came from (the TOML file, an SQFLOW_* variable or an argument); good values pass."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from data_contracts.settings import PipelineSettings
from flows.settings import SettingsError, load_settings

_SOURCE = '[source]\nkind = "npy"\npath = "/data/v.npy"\n'

#: (TOML text, field as named in the error, words of the reason)
BAD_TOML = [
    ("rank = inf\n", "rank = inf", "finite number"),
    ("rank = nan\n", "rank = nan", "finite number"),
    ("seed = -1\n", "seed = -1", "greater than or equal to 0"),
    ("seed = 4294967296\n", "seed = 4294967296", "less than or equal to 4294967295"),
    ("n_clusters = true\n", "n_clusters = true", "not a boolean"),
    ("n_clusters = 0\n", "n_clusters = 0", "use an integer >= 1 or 'auto'"),
    ("max_iter = false\n", "max_iter = false", "boolean"),
    ('cron = "every night"\n', 'cron = "every night"', "not a cron expression"),
    ('cron = "0 2 * *"\n', 'cron = "0 2 * *"', "not a cron expression"),
    ('timezone = "Mars/Olympus"\n', 'timezone = "Mars/Olympus"', "not an IANA time zone"),
    ('timezone = "../../etc/passwd"\n', "timezone =", "not an IANA time zone"),
    ('device = "tpu:9"\n', 'device = "tpu:9"', "valid: cpu, cuda, cuda:N"),
    ('device = "cuda:x"\n', 'device = "cuda:x"', "valid: cpu, cuda, cuda:N"),
    (_SOURCE + "value_range = [1.0, 0.0]\n", "source.value_range = [1.0, 0.0]", "is empty"),
    (_SOURCE + "value_range = [0.0, inf]\n", "source.value_range.1 = inf", "finite"),
    (
        _SOURCE + "image_size = [-28, 28]\n",
        "source.image_size.0 = -28",
        "greater than or equal to 1",
    ),
    (
        '[sample]\nmode = "uniform"\nn = 10\nseed = -1\n',
        "sample.seed = -1",
        "greater than or equal to 0",
    ),
    ('[sample]\nmode = "uniform"\nn = true\n', "sample.n = true", "boolean"),
    ("no_such_setting = 1\n", "no_such_setting = 1", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize("text,field,why", BAD_TOML, ids=[f for _, f, _ in BAD_TOML])
def test_bad_toml_value_names_field_and_file(tmp_path, monkeypatch, text, field, why):
    toml = tmp_path / "sqflow.toml"
    toml.write_text(text)
    monkeypatch.setenv("SQFLOW_CONFIG", str(toml))
    with pytest.raises(SettingsError) as e:
        load_settings()
    msg = str(e.value)
    line = next((ln for ln in msg.splitlines() if field in ln), None)
    assert line is not None, msg
    assert f"from {str(toml)!r}" in line and why in line, line


def test_toml_syntax_error_names_the_file(tmp_path, monkeypatch):
    toml = tmp_path / "broken.toml"
    toml.write_text('n_clusters = 10\ncron = "0 2 * * *\n')
    monkeypatch.setenv("SQFLOW_CONFIG", str(toml))
    with pytest.raises(SettingsError, match=r"settings file '.*broken\.toml' is not valid TOML"):
        load_settings()
    toml.write_bytes(b'timezone = "Europe/Kyiv\xff"\n')
    with pytest.raises(SettingsError, match=r"broken\.toml' is not UTF-8"):
        load_settings()


def test_environment_and_argument_origins_are_named(tmp_path, monkeypatch):
    toml = tmp_path / "sqflow.toml"
    toml.write_text("n_clusters = 7\n")
    monkeypatch.setenv("SQFLOW_CONFIG", str(toml))
    monkeypatch.setenv("SQFLOW_SEED", "-1")
    monkeypatch.setenv("SQFLOW_SOURCE__KIND", "npy")
    monkeypatch.setenv("SQFLOW_SOURCE__PATH", "/data/v.npy")
    monkeypatch.setenv("SQFLOW_SOURCE__IMAGE_SIZE", "[28, 0]")
    with pytest.raises(SettingsError) as e:
        load_settings(device="tpu:9")
    msg = str(e.value)
    assert 'seed = "-1" (from environment variable SQFLOW_SEED)' in msg
    assert "source.image_size.1 = 0 (from environment variable SQFLOW_SOURCE__IMAGE_SIZE)" in msg
    assert 'device = "tpu:9" (given as an argument / flow config)' in msg
    assert "n_clusters" not in msg  # the valid value from the file is not blamed


def test_good_values_load(tmp_path, monkeypatch):
    toml = tmp_path / "sqflow.toml"
    toml.write_text(
        'rank = 2.5\nseed = 4294967295\nn_clusters = 12\ncron = "*/15 3 * * 1-5"\n'
        'timezone = "Europe/Kyiv"\ndevice = "cuda:1"\n'
        + _SOURCE
        + "value_range = [-1.5, 1.5]\nimage_size = [28, 32]\n"
    )
    monkeypatch.setenv("SQFLOW_CONFIG", str(toml))
    s = load_settings()
    assert (s.rank, s.seed, s.n_clusters, s.cron, s.timezone, s.device) == (
        2.5,
        4294967295,
        12,
        "*/15 3 * * 1-5",
        "Europe/Kyiv",
        "cuda:1",
    )
    assert s.source.value_range == (-1.5, 1.5) and s.source.image_size == (28, 32)
    for dev in ("cpu", "cuda", "cuda:12", "mps"):
        assert load_settings(device=dev).device == dev


def test_the_contract_itself_validates_without_the_loader():
    """A notebook that builds PipelineSettings directly gets the same rules (cron aside, which
    Prefect checks in flows.settings); the error names the field."""
    for kw, loc in [
        ({"rank": float("inf")}, ("rank",)),
        ({"n_clusters": True}, ("n_clusters",)),
        ({"timezone": "Mars/Olympus"}, ("timezone",)),
        ({"device": "tpu:9"}, ("device",)),
        ({"seed": -1}, ("seed",)),
        (
            {"source": {"kind": "npy", "path": "v.npy", "value_range": [1.0, 0.0]}},
            ("source", "value_range"),
        ),
    ]:
        with pytest.raises(ValidationError) as e:
            PipelineSettings(**kw)
        assert [err["loc"] for err in e.value.errors()] == [loc], kw


def test_cli_refuses_bad_settings_before_starting_prefect(tmp_path, capsys, monkeypatch):
    from flows.cli import main

    monkeypatch.setenv("SQFLOW_CONFIG", str(tmp_path / "sqflow.toml"))  # restored afterwards
    toml = tmp_path / "sqflow.toml"
    toml.write_text('timezone = "Mars/Olympus"\n')
    assert main(["nightly", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "sqflow nightly: invalid settings" in err
    assert f'timezone = "Mars/Olympus" (from {str(toml)!r})' in err
