"""The nginx configurations: the upstream (a small JSON answer, a 20 KiB JSON answer full of
links, a 1 GiB download and an upload sink), the reference proxy in front of it, and a reference
proxy in front of the simulator's API. Every path nginx writes is in the run's temporary folder,
so no system directory is touched."""

from __future__ import annotations

import json
from pathlib import Path

SMALL_BODY = '{"id": 17345829, "name": "Ada Lovelace", "status": "ACTIVE", "states": ["TX"]}'
DOWNLOAD_SIZE = 1 << 30
# Not raised above nginx's default of 1,000 requests a connection, wrk and the proxies' pools
# would reconnect every 1,000 requests; a production upstream keeps connections much longer.
KEEPALIVE_REQUESTS = 1_000_000
# The token proxies send to the nginx upstream, which ignores it (the simulator needs a real one).
STATIC_TOKEN = "static"
LINKS_COUNT = 50  # absolute links on the upstream's own origin in the links answer
LINKS_SIZE = 20 * 1024  # bytes of the links answer


def _common(root: Path, name: str) -> str:
    """Process-wide settings: one worker, pid, logs and temporary files under root."""
    return f"""
worker_processes 1;
pid {root}/{name}.pid;
error_log {root}/{name}-error.log warn;
events {{ worker_connections 8192; }}
worker_rlimit_nofile 20000;
"""


def _http_common(root: Path, name: str) -> str:
    return f"""
    client_body_temp_path {root}/{name}-client-body;
    proxy_temp_path {root}/{name}-proxy;
    fastcgi_temp_path {root}/{name}-fastcgi;
    uwsgi_temp_path {root}/{name}-uwsgi;
    scgi_temp_path {root}/{name}-scgi;
    keepalive_requests {KEEPALIVE_REQUESTS};
    keepalive_timeout 75s;
"""


def links_body(origin: str) -> bytes:
    """A ProducerSync-like page of exactly LINKS_SIZE bytes: LINKS_COUNT records, each with an
    absolute `href` on `origin` (the last one the page's `next`), padded with plain text."""
    records = [
        {
            "npn": 17345829 + n,
            "name": f"Producer {n}",
            "status": "ACTIVE",
            "licenses": [
                {
                    "state": state,
                    "number": f"{n:04d}{index:03d}",
                    "class": "Producer",
                    "effective": "2020-01-01",
                    "expires": "2027-12-31",
                }
                for index, state in enumerate(("TX", "CA"))
            ],
            "links": {"self": {"href": f"{origin}/v2/entities/{17345829 + n}"}},
        }
        for n in range(LINKS_COUNT - 1)
    ]
    next_page = f"{origin}/v2/entities?continuationToken=eyJwIjoy%2BfQ"
    page: dict[str, object] = {"entities": records, "links": {"next": {"href": next_page}}}
    page["note"] = ""
    unpadded = len(json.dumps(page, separators=(",", ":")).encode())
    if unpadded > LINKS_SIZE:
        raise ValueError(f"the links answer is {unpadded} bytes before padding")
    page["note"] = "x" * (LINKS_SIZE - unpadded)
    body = json.dumps(page, separators=(",", ":")).encode()
    if len(body) != LINKS_SIZE or body.count(origin.encode()) != LINKS_COUNT:
        raise ValueError("the links answer came out the wrong size or with the wrong links")
    return body


def upstream_config(root: Path, port: int, download: Path, links: Path, sink_port: int) -> str:
    """The API stand-in.

    The upload sink: nginx streams the body (`proxy_request_buffering off`, 1 MiB reads) to
    `upload_sink.py`, which reads every byte before it answers 204, so an upload is answered
    only once it has all arrived, and nothing is stored. (`return 204` alone would answer at
    once and discard the body in the background, so an upload would look done too early; the
    default buffered `proxy_pass` would first write the whole body to a temporary file.)
    """
    return f"""{_common(root, "nginx-upstream")}
http {{
    {_http_common(root, "nginx-upstream")}
    access_log off;
    sendfile on;
    tcp_nopush on;
    upstream sink {{
        server 127.0.0.1:{sink_port};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/small {{
            default_type application/json;
            return 200 '{SMALL_BODY}';
        }}
        location = /v1/links {{
            default_type application/json;
            alias {links};
        }}
        location = /v1/download {{
            default_type application/octet-stream;
            alias {download};
        }}
        location = /v1/upload {{
            client_max_body_size 0;
            client_body_buffer_size 1m;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://sink;
        }}
    }}
}}
"""


def proxy_config(
    root: Path, port: int, upstream_port: int, token: str = STATIC_TOKEN, name: str = "nginx-proxy"
) -> str:
    """The reference proxy: one worker, a bearer token of its own, HTTP/1.1 keep-alive
    upstream, and an access log written to a file, as agentsync-proxy's is."""
    return f"""{_common(root, name)}
http {{
    {_http_common(root, name)}
    access_log {root}/{name}-access.log;
    upstream api {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests {KEEPALIVE_REQUESTS};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 0;
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{upstream_port};
            proxy_set_header Authorization "Bearer {token}";
        }}
    }}
}}
"""


def write_configs(
    root: Path, upstream_port: int, sink_port: int, proxy_port: int
) -> tuple[Path, Path]:
    """The sparse 1 GiB download file, the links answer and both config files; returns the
    configs' paths. nginx's workers run as nobody, so the folder and the files are made
    readable to all."""
    root.chmod(0o755)
    download = root / "download.bin"
    with download.open("wb") as file:
        file.truncate(DOWNLOAD_SIZE)
    download.chmod(0o644)
    links = root / "links.json"
    links.write_bytes(links_body(f"http://127.0.0.1:{upstream_port}"))
    links.chmod(0o644)
    upstream = root / "upstream.conf"
    upstream.write_text(upstream_config(root, upstream_port, download, links, sink_port))
    proxy = root / "nginx-proxy.conf"
    proxy.write_text(proxy_config(root, proxy_port, upstream_port))
    return upstream, proxy


def write_api_proxy_config(root: Path, port: int, simulator_port: int, token: str) -> Path:
    """nginx as a proxy in front of the simulator's API with a real token of the simulator's in
    a static `Authorization` header; the file is readable by its owner alone."""
    config = root / "nginx-api-proxy.conf"
    config.touch(mode=0o600)
    config.write_text(proxy_config(root, port, simulator_port, token, "nginx-api-proxy"))
    return config
