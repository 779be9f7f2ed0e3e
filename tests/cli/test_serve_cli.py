"""``vlgraph-serve``: the environment's PORT and HOST applied to a profile's http_options."""

import pytest
from pydantic import ValidationError

from tests.support.common import REPO_ROOT
from vlgraph.serve_cli import ListenAddress, ServeMode, apply_listen_address

PROFILE = {"http_options": {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 60}}


def test_port_and_host_replace_the_profiles() -> None:
    address = ListenAddress.from_environment({"PORT": "9000", "HOST": "0.0.0.0"})
    effective = apply_listen_address(PROFILE, address)
    assert effective["http_options"] == {"host": "0.0.0.0", "port": 9000, "request_timeout_s": 60}
    assert PROFILE["http_options"]["port"] == 8000, "the profile itself is left alone"


@pytest.mark.parametrize("environ", [{}, {"PORT": "", "HOST": ""}])
def test_unset_or_empty_keeps_the_profile(environ: dict) -> None:
    assert apply_listen_address(PROFILE, ListenAddress.from_environment(environ)) == PROFILE


def test_a_profile_without_http_options_gets_them() -> None:
    effective = apply_listen_address({}, ListenAddress.from_environment({"PORT": "8123"}))
    assert effective == {"http_options": {"port": 8123}}


@pytest.mark.parametrize("port", ["eighty", "0", "70000", "-1"])
def test_bad_ports_are_refused(port: str) -> None:
    with pytest.raises(ValidationError, match="port"):
        ListenAddress.from_environment({"PORT": port})


def test_serve_mode_defaults_to_classic_and_throughput_sets_rays_variables() -> None:
    assert ServeMode.from_environment({}).environment() == {}
    assert ServeMode.from_environment({"VLGRAPH_SERVE_MODE": ""}).mode == "classic"
    throughput = ServeMode.from_environment({"VLGRAPH_SERVE_MODE": "throughput"})
    assert throughput.environment() == {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
    }
    with pytest.raises(ValidationError, match="classic"):
        ServeMode.from_environment({"VLGRAPH_SERVE_MODE": "fast"})


def test_the_docker_image_runs_the_throughput_mode() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile.gpu").read_text()
    assert "ENV VLGRAPH_SERVE_MODE=throughput" in dockerfile
