"""The service's config file: the issue's example loads as written, every mistake is
named (file, section, key) with what to do, and the help lists every key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rlm.config import RLMConfig
from rlm.errors import ConfigurationError
from rlm.limits import SessionLimits
from rlm.service.config import CONFIG_HELP, load_config
from rlm.service.keys import SECTIONS
from rlm.tree import ModelPrice

HASH = hashlib.sha256(b"acme-token").hexdigest()
OTHER = hashlib.sha256(b"globex-token").hexdigest()

#: The issue's example, as written there (comments included), with a real hash.
EXAMPLE = f"""
[server]
database = "rlm.db"            # SQLite file (the default); or postgresql://...

[profiles.rlm]                 # a model name clients can ask for
model = "gpt-4.1"              # root model
sub_model = "gpt-4.1-mini"
backend = "docker"             # or "restricted" only with allow_unsafe_restricted

[[tenants]]
name = "acme"
token_sha256 = "{HASH}"
profiles = ["rlm"]
max_concurrent_runs = 4
"""

PROFILE = '[profiles.rlm]\nmodel = "gpt-4.1"\n'
TENANT = f'[[tenants]]\nname = "acme"\ntoken_sha256 = "{HASH}"\nprofiles = ["rlm"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rlm.toml"
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_the_issues_example_loads_as_written(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.server.database == str(tmp_path.resolve() / "rlm.db")
    profile = config.profiles["rlm"]
    assert (profile.model, profile.sub_model, profile.backend) == (
        "gpt-4.1",
        "gpt-4.1-mini",
        "docker",
    )
    assert profile.runtime == "runc" and profile.limits == SessionLimits()
    (tenant,) = config.tenants
    assert (tenant.name, tenant.token_sha256, tenant.profiles) == ("acme", HASH, ("rlm",))
    assert tenant.max_concurrent_runs == 4 and tenant.runs_per_minute == 60
    assert config.engines == ()
    assert config.server.replica_id  # <hostname>:<pid> unless set


def test_every_key_loads_with_its_type(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / "certs" / name).write_text("-----BEGIN CERTIFICATE-----\n")
    text = f"""
[server]
database = "postgresql://rlm@db.internal/rlm"
metrics_token_sha256 = "{OTHER.upper()}"
allow_unsafe_restricted = true
max_body_bytes = 1000
pool_size = 0
max_concurrent_sub_calls = 32
replica_id = "replica-a"

[profiles.deep]
model = "gpt-4.1"
sub_model = "gpt-4.1-mini"
backend = "docker"
runtime = "runsc"
max_depth = 2
child_model = "gpt-4.1-mini"
max_iterations = 7
max_sub_calls = "unlimited"
max_tokens = 500000
max_cost_usd = 2.5
max_wall_time_s = 600
max_children = 5
max_live_children = 2
max_consecutive_errors = 3
max_concurrent = 16
max_prompt_chars = 1000
max_batch_size = 50
allowed_models = ["gpt-4.1-nano"]
image = "rlm-sandbox:test"
docker_memory = "1g"
docker_cpus = 0.5
cell_timeout = 30
prices = {{ "gpt-4.1" = [2.0, 8.0] }}

[profiles."cheap.v1"]
model = "gpt-4.1-mini"
backend = "restricted"

[[tenants]]
name = "acme"
token_sha256 = "{HASH}"
profiles = ["deep", "cheap.v1"]
max_concurrent_runs = 1
runs_per_minute = "unlimited"
tokens_per_day = 1000000
max_context_bytes = 2048
max_wall_time_s = 120.5

[[engines]]
url = "tcp://10.0.0.5:2376"
ca_cert = "certs/ca.pem"
client_cert = "certs/cert.pem"
client_key = "{tmp_path}/certs/key.pem"
max_sandboxes = 20

[[engines]]
url = "tcp://127.0.0.1:2375"
insecure_plaintext = true

[[engines]]
url = "unix:///var/run/docker.sock"
"""
    config = load_config(write(tmp_path, text))
    server = config.server
    assert server.database == "postgresql://rlm@db.internal/rlm"
    assert server.metrics_token_sha256 == OTHER  # lower-cased
    assert server.allow_unsafe_restricted and server.max_body_bytes == 1000
    assert (server.pool_size, server.max_concurrent_sub_calls) == (0, 32)
    assert server.replica_id == "replica-a"
    deep = config.profiles["deep"]
    assert (deep.runtime, deep.max_depth, deep.child_model, deep.max_iterations) == (
        "runsc",
        2,
        "gpt-4.1-mini",
        7,
    )
    assert deep.limits == SessionLimits(
        max_sub_calls=None,
        max_tokens=500000,
        max_cost_usd=2.5,
        max_wall_time_s=600.0,
        max_children=5,
        max_live_children=2,
        max_consecutive_errors=3,
        max_concurrent=16,
        max_prompt_chars=1000,
        max_batch_size=50,
        allowed_models=frozenset({"gpt-4.1-nano"}),
    )
    assert (deep.image, deep.docker_memory, deep.docker_cpus, deep.cell_timeout) == (
        "rlm-sandbox:test",
        "1g",
        0.5,
        30.0,
    )
    assert deep.prices == {"gpt-4.1": ModelPrice(2.0, 8.0)}
    assert config.profiles["cheap.v1"].backend == "restricted"
    (tenant,) = config.tenants
    assert tenant.profiles == ("deep", "cheap.v1")
    assert (tenant.max_concurrent_runs, tenant.runs_per_minute, tenant.tokens_per_day) == (
        1,
        None,
        1000000,
    )
    assert (tenant.max_context_bytes, tenant.max_wall_time_s) == (2048, 120.5)
    first, plain, second = config.engines
    assert first.ca_cert == str(tmp_path.resolve() / "certs" / "ca.pem")
    assert first.client_key == f"{tmp_path}/certs/key.pem" and first.max_sandboxes == 20
    assert not first.insecure_plaintext and plain.insecure_plaintext
    assert second.url == "unix:///var/run/docker.sock" and second.ca_cert is None


def test_a_relative_database_is_taken_from_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    monkeypatch.chdir(tmp_path)
    text = f'[server]\ndatabase = "data/runs.db"\n{PROFILE}{TENANT}'
    path = tmp_path / "etc" / "rlm.toml"
    path.write_text(text)
    config = load_config(Path("etc/rlm.toml"))
    assert config.server.database == str(tmp_path.resolve() / "etc" / "data" / "runs.db")
    assert load_config(write(tmp_path, PROFILE + TENANT)).server.database == str(
        tmp_path.resolve() / "rlm.db"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A typo is an error, with the key it most likely meant.
        (
            EXAMPLE + "max_concurent_runs = 1\n",
            "[[tenants]] #1 (acme) max_concurent_runs: unknown key "
            "(did you mean 'max_concurrent_runs'?)",
        ),
        ("[server]\ndatabse = 'x.db'\n" + PROFILE + TENANT, "[server] databse: unknown key"),
        (PROFILE + "modle = 'x'\n" + TENANT, "[profiles.rlm] modle: unknown key"),
        ("[servre]\n" + PROFILE + TENANT, "[servre]: unknown section (did you mean 'server'?)"),
        (PROFILE + TENANT + "[[engines]]\nurl = 'tcp://a:1'\ntls = true\n", "tls: unknown key"),
        # Wrong types and values.
        (
            PROFILE + TENANT + "max_concurrent_runs = '4'\n",
            "max_concurrent_runs: must be an integer ≥ 1",
        ),
        (PROFILE + TENANT + "max_concurrent_runs = 0\n", "must be an integer ≥ 1"),
        (PROFILE + TENANT + "runs_per_minute = 'lots'\n", 'or "unlimited"'),
        (PROFILE + TENANT + "max_wall_time_s = -1\n", "must be a positive number"),
        ("[server]\nallow_unsafe_restricted = 'yes'\n" + PROFILE + TENANT, "true or false"),
        ("[server]\ndatabase = 'mysql://x'\n" + PROFILE + TENANT, "mysql:// is not supported"),
        ("[server]\nmax_body_bytes = true\n" + PROFILE + TENANT, "max_body_bytes: must be"),
        (PROFILE + "backend = 'dockr'\n" + TENANT, 'must be "docker" or "restricted"'),
        (PROFILE + "runtime = 'gvisor'\n" + TENANT, 'must be "runc" or "runsc"'),
        ("[profiles.rlm]\nmodel = ''\n" + TENANT, "[profiles.rlm] model: must be a non-empty"),
        (PROFILE + "prices = { m = [1] }\n" + TENANT, "[profiles.rlm] prices: price of 'm'"),
        (PROFILE + "max_live_children = 0\n" + TENANT, "max_live_children: must be"),
        # Required keys and sections.
        ("[profiles.rlm]\nsub_model = 'x'\n" + TENANT, "[profiles.rlm]: model is missing"),
        (TENANT, "[profiles]: no profile is defined"),
        (PROFILE, "[[tenants]]: no tenant is defined"),
        (PROFILE + "[tenants]\nname = 'acme'\n", "must be an array of tables"),
        (PROFILE + "[[tenants]]\nname = 'acme'\nprofiles = ['rlm']\n", "token_sha256 is missing"),
        ("[profiles]\nrlm = 3\n" + TENANT, "[profiles.rlm]: must be a table of keys"),
        ("[profiles.'a b']\nmodel = 'x'\n" + TENANT, "[profiles.a b]: a profile's name"),
        # Tenants.
        (PROFILE + TENANT.replace(HASH, "abc"), "token_sha256: must be 64 hex digits"),
        (PROFILE + TENANT.replace('"acme"', '"a c m e"'), "name: use letters, digits"),
        (PROFILE + TENANT.replace('["rlm"]', "[]"), "profiles: must be a non-empty list"),
        (PROFILE + TENANT.replace('["rlm"]', '["rlm", "rlm"]'), "names a profile twice"),
        (
            PROFILE + TENANT.replace('["rlm"]', '["rml"]'),
            "[[tenants]] #1 (acme) profiles: no profile is named 'rml' (did you mean 'rlm'?)",
        ),
        (PROFILE + TENANT + TENANT.replace(HASH, OTHER), "'acme' names two tenants"),
        (
            PROFILE + TENANT + TENANT.replace('"acme"', '"globex"'),
            "[[tenants]] #2 (globex) token_sha256: the same token hash as tenant 'acme'",
        ),
        # The unsafe backend needs the loudly named option.
        (
            PROFILE + "backend = 'restricted'\n" + TENANT,
            '[profiles.rlm] backend: "restricted" runs tenants\' model code inside the '
            "server process",
        ),
        (
            "[server]\nallow_unsafe_restricted = true\n"
            + PROFILE
            + "backend = 'restricted'\nruntime = 'runsc'\n"
            + TENANT,
            'runtime: runsc (gVisor) is a Docker runtime; it needs backend = "docker"',
        ),
        # Engines.
        (PROFILE + TENANT + "[[engines]]\nurl = 'ftp://x'\n", "url: must be a Docker engine URL"),
        (PROFILE + TENANT + "[[engines]]\nmax_sandboxes = 2\n", "#1: url is missing"),
        (
            PROFILE + TENANT + "[[engines]]\nurl = 'tcp://a:1'\nclient_cert = 'c.pem'\n",
            "client_cert and client_key go together",
        ),
        (
            PROFILE + TENANT + "[[engines]]\nurl = 'tcp://a:1'\ninsecure_plaintext = true\n" * 2,
            "[[engines]] #2 url: tcp://a:1 is listed twice",
        ),
        (
            PROFILE + TENANT + "[[engines]]\nurl = 'tcp://a:1'\n",
            "tcp://a:1 has no TLS, and a plain-TCP Docker API is root on that machine",
        ),
        (
            PROFILE + TENANT + "[[engines]]\nurl = 'tcp://a:1'\nca_cert = 'nowhere.pem'\n",
            "ca_cert: ",
        ),
        (
            PROFILE + TENANT + "[[engines]]\nurl = 'ssh://a'\n",
            "url: must be a Docker engine URL",
        ),
    ],
)
def test_each_mistake_is_named_with_what_to_do(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refused(tmp_path, text)


def test_a_file_that_is_missing_or_not_toml_is_said_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no such config file; pass --config FILE"):
        load_config(tmp_path / "absent.toml")
    assert "not valid TOML" in refused(tmp_path, "[server\n")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nreplica_id = "caf\xe9"\n')
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(path)


def test_no_error_shows_a_token_hash(tmp_path: Path) -> None:
    message = refused(tmp_path, PROFILE + TENANT + TENANT.replace('"acme"', '"globex"'))
    assert HASH not in message


def test_the_help_documents_every_key_of_the_tables() -> None:
    for section, (keys, _owner) in SECTIONS.items():
        assert section in CONFIG_HELP
        for key in keys:
            assert f"\n  {key.name}: {key.kind.shown}; " in CONFIG_HELP, key.name
    # The issue's keys, and the defaults read from the fields.
    for shown in (
        'database: SQLite path or postgresql:// URL; default "rlm.db"',
        "allow_unsafe_restricted: true or false; default false",
        "model: string; required",
        'backend: "docker" or "restricted"; default "docker"',
        "max_concurrent_runs: integer ≥ 1; default 4",
        "replica_id: string; default <hostname>:<pid>",
        'tokens_per_day: integer ≥ 0 or "unlimited"; default unlimited',
        'max_sub_calls: integer ≥ 0 or "unlimited"; default 10000',
        "OPENAI_API_KEY",
        "sha256sum",
    ):
        assert shown in CONFIG_HELP, shown
    assert max(len(line) for line in CONFIG_HELP.splitlines()) <= 100


def test_a_profiles_rlm_config_carries_the_profile_over_the_environments_key(
    tmp_path: Path,
) -> None:
    text = (
        PROFILE
        + "sub_model = 'gpt-4.1-mini'\nruntime = 'runsc'\nmax_depth = 2\nmax_iterations = 5\n"
        + "max_wall_time_s = 900\nprices = { 'gpt-4.1' = [2.0, 8.0] }\n"
        + TENANT
        + "max_wall_time_s = 60\n"
        + TENANT.replace('"acme"', '"globex"').replace(HASH, OTHER)
        + "max_wall_time_s = 'unlimited'\n"
    )
    config = load_config(write(tmp_path, text))
    profile = config.profiles["rlm"]
    base = RLMConfig(
        model="env-model",
        api_key="sk-from-env",
        base_url="http://provider.test/v1",
        max_iterations=20,
        prices={"gpt-4.1-mini": ModelPrice(0.4, 1.6), "gpt-4.1": ModelPrice(9, 9)},
    )
    acme, globex = config.tenants
    made = profile.rlm_config(base, tenant=acme)
    assert (made.api_key, made.base_url) == ("sk-from-env", "http://provider.test/v1")
    assert (made.model, made.sub_model, made.backend, made.docker_runtime) == (
        "gpt-4.1",
        "gpt-4.1-mini",
        "docker",
        "runsc",
    )
    assert (made.max_depth, made.max_iterations, made.tenant) == (2, 5, "acme")
    assert made.prices == {"gpt-4.1-mini": ModelPrice(0.4, 1.6), "gpt-4.1": ModelPrice(2, 8)}
    assert made.limits.max_wall_time_s == 60  # the tenant's, lower than the profile's
    assert profile.rlm_config(base, tenant=globex).limits.max_wall_time_s == 900
    plain = profile.rlm_config(base)
    assert (plain.tenant, plain.limits.max_wall_time_s) == ("default", 900)
    unset = load_config(write(tmp_path, PROFILE + TENANT)).profiles["rlm"].rlm_config(base)
    assert (unset.sub_model, unset.max_iterations, unset.image) == (None, 20, base.image)


def test_a_tenants_repr_does_not_show_its_token_hash(tmp_path: Path) -> None:
    (tenant,) = load_config(write(tmp_path, PROFILE + TENANT)).tenants
    assert HASH not in repr(tenant)
