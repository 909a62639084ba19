"""The learner's generation servers: one URL or several, from flags or the environment, checked alike."""

import pytest

from trainer.__main__ import parse_settings


@pytest.mark.parametrize(
    ("environment", "flags", "expected"),
    [
        ("http://a:1, http://b:2", [], ["http://a:1", "http://b:2"]),
        ("http://a:1", ["--generation-urls", "http://x:1,http://y:2"], ["http://x:1", "http://y:2"]),
        ("", ["--generation-urls", "http://x:1", "--generation-urls", "http://y:2"], ["http://x:1", "http://y:2"]),
        ("", [], ["http://127.0.0.1:8000"]),
    ],
)
def test_servers_come_from_flags_or_the_environment(environment, flags, expected, monkeypatch):
    monkeypatch.setenv("CFPO_GENERATION_URL", environment)
    assert parse_settings(["--worker", *flags]).generation_urls == expected


@pytest.mark.parametrize(
    ("environment", "flags", "problem"),
    [
        ("localhost:8000", [], "'localhost:8000': expected an http:// or https:// URL"),
        (
            "",
            ["--generation-urls", "http://a:1,http://a:1"],
            "a server is listed twice; each takes its own share of the groups",
        ),
    ],
)
def test_a_bad_server_list_is_one_line_naming_the_setting(environment, flags, problem, monkeypatch, capsys):
    monkeypatch.setenv("CFPO_GENERATION_URL", environment)
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--worker", *flags])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: generation_urls: {problem}\n"
