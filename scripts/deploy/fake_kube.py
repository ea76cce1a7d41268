"""A Kubernetes API server that knows only Secrets, for rendering the chart with `lookup`.

helm_python.Config.render renders "cluster-aware": the chart's `lookup` calls reach the API
server of the kubeconfig. This one answers them from a dict, so check_chart.py can render an
upgrade (the release's Secret already there) or an install next to an existing Secret,
without a cluster. Only what `lookup "v1" "Secret" <namespace> <name>` asks is served:
discovery of /api/v1 and GET of one Secret (404 when absent).

    with FakeKube({("ns", "name"): {"KEY": "value"}}) as kube:
        manifests = kube.render(chart, values, name="hookbus", namespace="ns")
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RESOURCES = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
    {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
     "verbs": ["get", "list"]}]}


class FakeKube:
    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]]) -> None:
        """secrets: (namespace, name) -> {key: plain value}."""
        self.secrets = secrets
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._config: Any = None

    def _secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        data = self.secrets.get((namespace, name))
        if data is None:
            return None
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}

    def __enter__(self) -> FakeKube:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def answer(self, code: int, obj: dict[str, Any]) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?")[0].rstrip("/")
                fake.requests.append(path)
                parts = path.strip("/").split("/")
                if path == "/api":
                    return self.answer(200, {"kind": "APIVersions", "versions": ["v1"]})
                if path == "/apis":
                    return self.answer(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
                if path == "/api/v1":
                    return self.answer(200, RESOURCES)
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
                    secret = fake._secret(parts[3], parts[5])
                    if secret is not None:
                        return self.answer(200, secret)
                return self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                         "reason": "NotFound", "code": 404, "message": f"{path} not found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        import helm_python  # noqa: PLC0415 - only the venv has it

        port = self._server.server_address[1]
        kubeconfig = f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: fake, user: {{token: fake}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]
current-context: fake
"""
        self._config = helm_python.Config(kubeconfig_content=kubeconfig, storage_driver="memory")
        return self

    def render(self, chart: Any, values: dict[str, Any], *, name: str, namespace: str,
               upgrade: bool = False) -> dict[str, str]:
        """The chart rendered with `lookup` answered from this server's Secrets."""
        return self._config.render(chart, values, name=name, namespace=namespace,
                                   is_install=not upgrade, is_upgrade=upgrade)

    def __exit__(self, *exc: Any) -> None:
        if self._config is not None:
            self._config.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
