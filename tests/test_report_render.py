"""The one-page report renders in a real browser: a 20 s load on simple-crypto with a
node_kill window (Locust as a subprocess), then headless Chromium takes a screenshot
(must not be blank) and dumps the DOM (the charts' SVG elements, the verdict table and
the ledger table must be there). Chromium missing: skipped locally, a failure in CI.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.timeline import Event

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("simple-crypto")]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("headless Chromium is required in CI: apt-get install -y chromium")
    pytest.skip("Chromium not installed (apt-get install -y chromium); CI=true makes this a failure")


def chromium(exe: str, profile: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def png_gray(path: Path) -> list[int]:
    """Gray levels of an 8-bit RGB/RGBA PNG (what Chromium writes), decoded by hand."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6), f"unexpected PNG format depth={depth} color={color}"
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    gray: list[int] = []
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:  # every 4th row and column is plenty for a variance
            gray += [(line[x] + line[x + 1] + line[x + 2]) // 3 for x in range(0, stride, bpp * 4)]
        prev = line
    return gray


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def having(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.found if t == tag and all(
            v in (a.get(k.rstrip("_")) or "").split() or a.get(k.rstrip("_")) == v for k, v in attrs.items())]


def test_report_renders_in_headless_chromium(env_of, tmp_path):
    exe = browser()
    from harness.load_driver.driver import run_load
    from harness.load_driver.thresholds import Threshold
    from harness.report import build_report

    env = env_of("simple-crypto")
    env.reload_state()
    result = run_load(env, users=6, spawn_rate=6, duration=20, seed=3,
                      timeline_events=[Event(at=5, fault="node_kill", params={"node": "1"}, heal_at=9)],
                      thresholds=[Threshold("error_ratio", 0.5, phase="outside")])
    env.reload_state()
    assert result.errors == [] and result.ledger["ok"], (result.errors, result.ledger)
    report = build_report(env.run_dir)

    shot = tmp_path / "report.png"
    proc = chromium(exe, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,2200",
                    report.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    gray = png_gray(shot)
    mean = sum(gray) / len(gray)
    variance = sum((g - mean) ** 2 for g in gray) / len(gray)
    dark = sum(g < 128 for g in gray) / len(gray)
    assert variance > 200 and 0.005 < dark < 0.6, f"blank-looking screenshot: variance {variance:.0f}, dark {dark:.3f}"

    dom = chromium(exe, tmp_path / "profile-dom", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Elements()
    page.feed(dom.stdout)
    run = result.out_dir.name
    charts = {a.get("data-chart") for a in page.having("svg", class_="chart")}
    assert {"latency", "rate", "errors", "latency-by-name"} <= charts, charts
    assert [a for a in page.having("rect", class_="window") if a.get("data-fault") == "node_kill"]
    assert {a.get("data-series") for a in page.having("path", class_="line")} >= {"p50", "p95", "requests/s"}
    assert page.having("rect", class_="bar"), "the error chart has no bars (the killed node refused connections)"
    assert page.having("table", id="verdicts") and page.having("table", id=f"thresholds-{run}")
    assert page.having("table", id=f"ledger-{run}") and page.having("table", id="environment")
    text = dom.stdout
    assert "NOTHING LOST" in text and "ConnectionRefusedError" in text
    for secret in (env.ctx.secrets.user_password, env.ctx.secrets.kek, env.ctx.secrets.admin_password):
        assert secret not in text
