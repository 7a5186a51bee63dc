"""A Toxiproxy-compatible TCP fault proxy in asyncio.

Why our own: Toxiproxy is a Go program and cannot be installed on the harness machines
(no package, no Go toolchain recent enough). This speaks Toxiproxy 2.x's HTTP API, so
the same clients (toxiproxy-python, chaostoolkit-toxiproxy, curl) drive either, and a
real Toxiproxy can be swapped in with TOXIPROXY_URL (see harness.services.proxy).

Modules, one concept each:
  httpd   — a minimal HTTP/1.1 server on asyncio
  api     — Toxiproxy's routes, JSON, status codes and error bodies
  server  — the proxy collection; running it as a process or in a thread
  proxy   — one proxy: its loopback listener, toxics and connections
  link    — one connection and its two directions (the data path)
  toxics  — toxic configuration and what each toxic does to the data

Differences from Toxiproxy: proxies and the API listen on 127.0.0.1 only; toxicity is
decided per connection from a seeded RNG (replayable); an EOF is passed on as a
half-close instead of closing both sides. The module docstrings say why.
"""

from harness.proxy.server import ProxyServer, ServerThread, run

__all__ = ["ProxyServer", "ServerThread", "run"]
