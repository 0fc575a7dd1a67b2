"""RLMConfig: arguments win over the environment, which wins over a .env file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlm.config import _ENVIRONMENT, RLMConfig
from rlm.errors import ConfigurationError
from rlm.image import DEFAULT_IMAGE


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable, _ in _ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)


def test_nothing_set_gives_the_field_defaults() -> None:
    assert RLMConfig.from_env() == RLMConfig()
    assert RLMConfig().image == DEFAULT_IMAGE
    assert RLMConfig().backend == "auto"


def test_arguments_win_over_the_environment_which_wins_over_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "RLM_MODEL=from-dotenv\nRLM_SUB_MODEL=sub-from-dotenv\nRLM_CELL_TIMEOUT=7\n"
        "RLM_IMAGE=dotenv-image:1\n"
    )
    monkeypatch.setenv("RLM_MODEL", "from-env")
    monkeypatch.setenv("RLM_CELL_TIMEOUT", "9")
    config = RLMConfig.from_env(cell_timeout=11.0)
    assert config.model == "from-env"
    assert config.sub_model == "sub-from-dotenv"
    assert config.cell_timeout == 11.0
    assert config.image == "dotenv-image:1"
    assert RLMConfig.from_env().cell_timeout == 9.0


def test_dotenv_is_read_but_never_copied_into_the_process_environment(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\n")
    assert RLMConfig.from_env().api_key == "sk-from-dotenv"
    assert "OPENAI_API_KEY" not in os.environ
    assert RLMConfig.from_env(dotenv=False).api_key is None


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_BACKEND", "")
    monkeypatch.setenv("RLM_MAX_ITERATIONS", "")
    config = RLMConfig.from_env()
    assert config.backend == "auto" and config.max_iterations == RLMConfig().max_iterations


def test_an_override_of_none_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_MODEL", "from-env")
    assert RLMConfig.from_env(model=None, backend=None).model == "from-env"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("RLM_CELL_TIMEOUT", "soon"), ("RLM_MAX_ITERATIONS", "2.5"), ("RLM_DOCKER_CPUS", "one")],
)
def test_a_bad_number_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=f"{variable}='{value}' is not a valid"):
        RLMConfig.from_env()


def test_every_variable_is_read_into_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = {str: "x", int: "300", float: "2.5"}
    for name, (variable, kind) in _ENVIRONMENT.items():
        if name not in ("backend", "restricted_isolation"):  # both checked against a list
            monkeypatch.setenv(variable, samples[kind])
    config = RLMConfig.from_env()
    for name, (_, kind) in _ENVIRONMENT.items():
        if name not in ("backend", "restricted_isolation"):  # both checked against a list
            assert getattr(config, name) == kind(samples[kind]), name


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backend": "podman"}, "unknown backend 'podman'"),
        ({"cell_timeout": 0}, "timeouts must be positive"),
        ({"max_iterations": 0}, "max_iterations must be at least 1"),
    ],
)
def test_invalid_settings_are_refused_with_what_is_allowed(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RLMConfig().with_(**changes)


def test_an_unknown_setting_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown settings"):
        RLMConfig.from_env(modle="typo")


def test_the_sub_model_defaults_to_the_root_model() -> None:
    assert RLMConfig(model="m").effective_sub_model == "m"
    assert RLMConfig(model="m", sub_model="s").effective_sub_model == "s"
