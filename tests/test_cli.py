"""The ``sqflow`` command line explains itself: ``--version``, help text on every flag of every
command, ``sqflow config`` (effective settings, their source and variable), the UI address."""

from __future__ import annotations

import argparse
import json
from importlib.metadata import version

import pytest

from flows import cli


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sqflow {version('sqflow')}"


def test_every_flag_of_every_command_has_help(monkeypatch, capsys):
    missing: list[str] = []
    real = argparse.ArgumentParser.add_argument

    def add_argument(self, *names, **kw):
        if not kw.get("help") and kw.get("action") not in ("help", "version"):
            missing.append(f"{self.prog} {'/'.join(names)}")
        return real(self, *names, **kw)

    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", add_argument)
    for name, fn in cli.COMMANDS.items():
        with pytest.raises(SystemExit) as exit_:
            fn(["--help"])
        assert exit_.value.code == 0, name
        assert (fn.__doc__ or "").strip(), f"{name} has no description"
    assert not missing, f"flags without help text: {missing}"
    assert cli.main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert "--version" in listing and all(f"  {name} " in listing for name in cli.COMMANDS)


def test_config_names_source_and_variable(tmp_path, monkeypatch, capsys):
    toml = tmp_path / "sqflow.toml"
    toml.write_text('n_clusters = 7\n[source]\nkind = "npy"\npath = "/data/x.npy"\n')
    monkeypatch.setenv("SQFLOW_CONFIG", str(toml))
    monkeypatch.setenv("SQFLOW_MAX_ITER", "4")
    monkeypatch.setenv("SQFLOW_SOURCE__PATH", "/data/y.npy")
    assert cli.main(["config", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["n_clusters"] == {
        "name": "n_clusters",
        "value": 7,
        "source": f"TOML {toml}",
        "env": "SQFLOW_N_CLUSTERS",
    }
    assert rows["max_iter"]["value"] == 4 and rows["max_iter"]["source"] == "environment"
    assert rows["source.kind"]["source"].startswith("TOML")
    assert rows["source.path"]["value"] == "/data/y.npy"
    assert rows["source.path"]["source"] == "environment"
    assert rows["source.path"]["env"] == "SQFLOW_SOURCE__PATH"
    assert rows["rank"]["source"] == "default" and rows["rank"]["value"] == 3.0
    assert cli.main(["config"]) == 0
    text = capsys.readouterr().out
    assert "SQFLOW_N_CLUSTERS" in text and "environment" in text and str(toml) in text
    # a bad value is refused with the field's name
    monkeypatch.setenv("SQFLOW_N_CLUSTERS", "zero")
    assert cli.main(["config"]) == 2
    assert "n_clusters" in capsys.readouterr().err


def test_ui_address_uses_the_real_port():
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(
        updates={PREFECT_API_URL: "http://127.0.0.1:4321/api"}, restore_defaults={PREFECT_UI_URL}
    ):
        assert "http://127.0.0.1:4321/runs/flow-run/abc" in cli._ui_hint("abc")
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):
        hint = cli._ui_hint("abc")
    assert "ephemeral" in hint and "sqflow ui --port PORT" in hint
