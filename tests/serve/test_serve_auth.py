"""The bind rule, where the token comes from, and the token kept out of reprs, reports and command lines
(no server; the HTTP side is in test_serve_endpoint.py)."""

from __future__ import annotations

import json

import pytest

from mmray.cli import main
from mmray.config import load_config, to_dict
from mmray.errors import ConfigError
from mmray.pipeline import PipelineConfig
from mmray.serve.auth import digest, is_loopback, redact, refuse_secret_overrides
from mmray.serve.config import MIB, ServeConfig, check_bind, serving_token, token_digest

SECRET = "s3cret-serving-token-4711"


@pytest.fixture(autouse=True)
def _no_token_env(monkeypatch):
    monkeypatch.delenv("MMRAY_SERVE_TOKEN", raising=False)


def _serve(*overrides: str) -> ServeConfig:
    return load_config(ServeConfig, None, list(overrides))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_hosts(host):
    assert is_loopback(host)
    check_bind(_serve(f"host='{host}'"))  # no token needed


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.0.2.7", "", "no-such-host.invalid"])
def test_other_hosts_need_a_token(host):
    assert not is_loopback(host)
    with pytest.raises(ConfigError) as info:
        check_bind(_serve(f"host='{host}'"))
    (path, message), = info.value.problems
    assert path == "host" and repr(host) in message
    assert "MMRAY_SERVE_TOKEN" in message and "token_file" in message and "allow_unauthenticated: true" in message


def test_a_token_or_the_explicit_opt_out_allows_any_host(tmp_path, monkeypatch):
    check_bind(_serve("host=0.0.0.0", f"token={SECRET}"))
    check_bind(_serve("host=0.0.0.0", "allow_unauthenticated=true"))
    token_file = tmp_path / "token"
    token_file.write_text(f"  {SECRET}\n")
    cfg = _serve("host=0.0.0.0", f"token_file={token_file}")
    check_bind(cfg)
    assert serving_token(cfg) == SECRET and token_digest(cfg) == digest(SECRET)
    monkeypatch.setenv("MMRAY_SERVE_TOKEN", SECRET)
    check_bind(_serve("host=0.0.0.0"))
    monkeypatch.setenv("MMRAY_SERVE_TOKEN", "   ")  # blank is no token
    with pytest.raises(ConfigError, match="not a loopback"):
        check_bind(_serve("host=0.0.0.0"))


def test_an_unreadable_token_file_is_named(tmp_path):
    for path, why in ((tmp_path / "absent", "cannot read"), (tmp_path / "empty", "is empty")):
        if why == "is empty":
            path.write_text("\n")
        with pytest.raises(ConfigError) as info:
            check_bind(_serve(f"token_file={path}"))
        (key, message), = info.value.problems
        assert key == "token_file" and str(path) in message and why in message


def test_new_keys_and_their_defaults():
    cfg = ServeConfig()
    assert cfg.max_request_bytes == 8 * MIB and cfg.allow_unauthenticated is False and cfg.token_file is None
    with pytest.raises(ConfigError) as info:
        _serve("max_request_bytes=10")
    assert [p for p, _ in info.value.problems] == ["max_request_bytes"]


def test_the_token_stays_out_of_reprs_reports_and_command_lines():
    assert SECRET not in repr(_serve(f"token={SECRET}"))
    assert redact({"token": SECRET, "port": 1}) == {"token": "<redacted>", "port": 1}
    assert redact({"token": None, "a": [{"token": SECRET}]}) == {"token": None, "a": [{"token": "<redacted>"}]}
    pipeline = load_config(PipelineConfig, None, ["store=/tmp/s", "stages=[report]", f"serve.token={SECRET}"])
    shown = json.dumps(redact(to_dict(pipeline)))  # what the report stage shows of the config
    assert SECRET not in shown and '"token": "<redacted>"' in shown and SECRET in repr(pipeline.serve)
    with pytest.raises(ConfigError) as info:
        refuse_secret_overrides(["port=1", f"token={SECRET}", f"serve.token={SECRET}", "token_env=X"])
    assert [p for p, _ in info.value.problems] == ["token", "serve.token"]
    assert SECRET not in str(info.value)


def test_the_pipeline_refuses_an_open_serve_host_up_front_only_when_it_serves():
    with pytest.raises(ConfigError) as info:
        load_config(PipelineConfig, None, ["store=/tmp/s", "stages=[signatures, serve]", "cohort=c.yaml",
                                           "serve.host=0.0.0.0"])
    assert [p for p, _ in info.value.problems] == ["serve.host"]
    load_config(PipelineConfig, None, ["store=/tmp/s", "stages=[report]", "serve.host=0.0.0.0"])


def test_mmray_serve_refuses_before_starting_ray(tmp_path, capsys):
    assert main(["serve", "--store", str(tmp_path), "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "'0.0.0.0' is not a loopback address" in err and "allow_unauthenticated" in err
    assert main(["serve", "--store", str(tmp_path), f"token={SECRET}"]) == 1
    err = capsys.readouterr().err
    assert "do not pass the serving token on the command line" in err and SECRET not in err
    assert main(["pipeline", "--store", str(tmp_path), f"serve.token={SECRET}"]) == 1
    assert "serve.token" in capsys.readouterr().err
