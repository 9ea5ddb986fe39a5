"""The deployment files are closed by default (issue 14): no service of the compose file is
published on every interface, and the Prefect server it starts requires basic auth."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_compose_binds_loopback_and_requires_prefect_auth():
    compose = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())
    published = []
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            published.append((name, str(port)))
            # "HOST:PUBLISHED:TARGET" with HOST defaulting to loopback; a bare "4200:4200"
            # would listen on 0.0.0.0
            host, _, _ = str(port).rpartition(":")[0].rpartition(":")
            assert host == "${SQFLOW_BIND_ADDRESS:-127.0.0.1}", (name, port)
    assert {n for n, _ in published} == {"prefect-server", "dask-scheduler"}
    server_env = compose["services"]["prefect-server"]["environment"]
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    worker_env = compose["services"]["prefect-worker"]["environment"]
    assert worker_env["PREFECT_API_AUTH_STRING"] == server_env["PREFECT_SERVER_API_AUTH_STRING"]
