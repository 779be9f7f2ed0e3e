"""The access section of a profile: keys as hashes (from the profile and the environment),
named limits, and the refusals that keep a keyed service from starting open by mistake."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from graphs.ingress import AccessNotConfiguredError, access_rules
from tests.support.common import REPO_ROOT
from vlgraph.access_config import AccessConfig, ApiKey, RateLimit, hash_key
from vlgraph.config import AppConfig
from vlgraph.keys_cli import main as keys_main
from vlgraph.profiles import load_application

KEY = "a-key-long-enough-to-be-a-key-123"


@pytest.fixture(autouse=True)
def no_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLGRAPH_API_KEYS", raising=False)
    monkeypatch.delenv("VLGRAPH_ACCESS", raising=False)


def test_keys_are_stored_as_sha256_hashes() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ValidationError, match="sha256"):
        ApiKey(name="alice", sha256=KEY)  # a key in clear is not a hash


def test_a_keyed_profile_without_a_key_refuses_to_start_and_says_how() -> None:
    args = load_application(REPO_ROOT / "serve_config.yaml")["args"]
    config = AppConfig.model_validate(args)
    assert config.access.mode == "keys"
    with pytest.raises(AccessNotConfiguredError) as refused:
        access_rules(config.access)
    message = str(refused.value)
    assert "VLGRAPH_API_KEYS=name:key" in message and "vlgraph-keys new NAME" in message
    assert "access.mode: open" in message and "VLGRAPH_ACCESS=open" in message


def test_the_offline_and_local_profiles_are_open_and_the_switch_opens_the_gpu_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for profile in ("configs/offline.yaml", "configs/local.yaml"):
        config = AppConfig.model_validate(load_application(REPO_ROOT / profile)["args"])
        assert access_rules(config.access).mode == "open"
    monkeypatch.setenv("VLGRAPH_ACCESS", "open")
    args = load_application(REPO_ROOT / "serve_config.yaml")["args"]
    assert access_rules(AppConfig.model_validate(args).access).mode == "open"


def test_environment_keys_are_named_and_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLGRAPH_API_KEYS", f"alice:{KEY}, bob:{KEY}-b")
    rules = AccessConfig(keys=(ApiKey(name="carol", sha256=hash_key(KEY + "c")),)).rules()
    assert [(key.name, key.sha256) for key in rules.keys] == [
        ("carol", hash_key(KEY + "c")),
        ("alice", hash_key(KEY)),
        ("bob", hash_key(KEY + "-b")),
    ]
    assert KEY not in rules.model_dump_json()


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("just-a-key-without-a-name-000", "not name:key"),
        ("alice:short", "at least 20"),
        ("bad name:" + KEY, "not name:key"),
        (f"alice:{KEY},alice:{KEY}x", "repeated"),
        (f"alice:{KEY},bob:{KEY}", "same value"),
    ],
)
def test_malformed_environment_keys_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, complaint: str
) -> None:
    monkeypatch.setenv("VLGRAPH_API_KEYS", value)
    with pytest.raises(ValueError, match=complaint):
        AccessConfig().rules()


def test_the_admin_key_is_never_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLGRAPH_API_KEYS", f"alice:{KEY}")
    with pytest.raises(ValueError, match="is the admin key"):
        AccessConfig().rules(SecretStr(KEY))
    rules = AccessConfig().rules(SecretStr("another-admin-key"))
    assert rules.admin_sha256 == hash_key("another-admin-key")


def test_limits_by_key_name_by_reference_and_by_default() -> None:
    tight, roomy = RateLimit(requests_per_minute=5), RateLimit(max_in_flight=100)
    config = AccessConfig(
        keys=(
            ApiKey(name="alice", sha256=hash_key(KEY + "a"), limit="tight"),
            ApiKey(name="roomy", sha256=hash_key(KEY + "r")),
            ApiKey(name="bob", sha256=hash_key(KEY + "b")),
        ),
        limits={"tight": tight, "roomy": roomy, "default": RateLimit(requests_per_minute=60)},
    )
    rules = config.rules()
    limits = {key.name: rules.limit_of(key) for key in rules.keys}
    assert limits == {"alice": tight, "roomy": roomy, "bob": RateLimit(requests_per_minute=60)}
    unlimited = AccessConfig(keys=config.keys[1:2], limits={}).rules()
    assert unlimited.limit_of(unlimited.keys[0]) is None
    with pytest.raises(ValidationError, match="does not define"):
        AccessConfig(keys=(ApiKey(name="x", sha256=hash_key(KEY), limit="gold"),))


def test_vlgraph_keys_prints_a_new_key_once_and_its_hashed_entry(capsys) -> None:
    assert keys_main(["new", "ci", "--limit", "tight"]) == 0
    printed = capsys.readouterr().out
    key = printed.split("VLGRAPH_API_KEYS=ci:")[1].split()[0]
    assert key.startswith("vlg-") and len(key) >= 40
    assert f"- {{name: ci, sha256: {hash_key(key)}, limit: tight}}" in printed
    assert printed.count(key) == 2  # the key and its environment form, nothing else


def test_vlgraph_keys_hashes_a_key_read_from_stdin(monkeypatch, capsys) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert keys_main(["hash", "ops"]) == 0
    printed = capsys.readouterr().out
    assert f"- {{name: ops, sha256: {hash_key(KEY)}}}" in printed and KEY not in printed
