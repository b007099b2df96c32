"""The attention HTML page in a real headless Chromium: it draws, reacts to clicks and hovers,
reads its view from the URL, and needs no network.

Chromium comes from Debian's ``chromium`` package (``scripts/ensure-chromium.sh`` installs
it); without it these tests skip. The page's own ``#selftest`` clicks a head button with
``element.click()`` and writes what happened into the DOM; ``--dump-dom`` hands that DOM back,
where the drawn cells are checked against the weights that went in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from multihead.viz import AttentionMap, write_attention_html


def _chromium() -> str:
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("chromium not found; run scripts/ensure-chromium.sh to install it")


def _run(args: list[str], tmp_path: Path) -> str:
    profile = tmp_path / "profile"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        # Any name lookup fails: a page that fetched anything would break, not silently pass.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        *args,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium could not run here: {exc}")
    if done.returncode != 0 and not done.stdout:
        pytest.skip(f"chromium failed to start: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


class _DomReader(HTMLParser):
    """The heatmap's cells (fill-opacity by (row, column)) and the self-test's report."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # > 0 while inside <div id="heatmap">
        self.cells: dict[tuple[int, int], float] = {}
        self.svg_attrs: dict[str, str] = {}
        self._in_result = False
        self.selftest = ""
        self.active_heads: list[str] = []
        self.key_shades: list[str] = []  # data-weight of each key token ("" = not shaded)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "div" and a.get("id") == "heatmap":
            self.depth = 1
        elif self.depth:
            if tag == "div":
                self.depth += 1
            if tag == "svg" and not self.svg_attrs:
                self.svg_attrs = a
            if tag == "rect" and a.get("class") == "cell":
                self.cells[(int(a["data-i"]), int(a["data-j"]))] = float(a["fill-opacity"])
        if tag == "pre" and a.get("id") == "selftest-result":
            self._in_result = True
        if tag == "div" and a.get("class", "").split()[:2] == ["tok", "key"]:
            self.key_shades.append(a.get("data-weight", ""))
        if tag == "button" and "active" in a.get("class", "") and "data-head" in a:
            self.active_heads.append(a["data-head"])

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag == "div":
            self.depth -= 1
        if tag == "pre":
            self._in_result = False

    def handle_data(self, data: str) -> None:
        if self._in_result:
            self.selftest += data


def _read(dom: str) -> _DomReader:
    reader = _DomReader()
    reader.feed(dom)
    return reader


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[AttentionMap]]:
    g = torch.Generator().manual_seed(0)
    src, tgt = tuple("Nov 22"), tuple("2026")
    maps = [
        AttentionMap(
            name="encoder.layers.0.self_attn",
            kind="self",
            weights=torch.softmax(3 * torch.randn(3, 6, 6, generator=g), -1),
            heads=(0, 1, 2),
            query_tokens=src,
            key_tokens=src,
        ),
        AttentionMap(
            name="decoder.layers.0.cross_attn",
            kind="cross",
            weights=torch.softmax(3 * torch.randn(3, 4, 6, generator=g), -1),
            heads=(0, 1, 2),
            query_tokens=tgt,
            key_tokens=src,
        ),
    ]
    path = write_attention_html(maps, tmp_path_factory.mktemp("html") / "attention.html")
    return path, maps


def _assert_drawn(reader: _DomReader, weights: torch.Tensor) -> None:
    nq, nk = weights.shape
    assert len(reader.cells) == nq * nk
    drawn = torch.tensor([[reader.cells[(i, j)] for j in range(nk)] for i in range(nq)])
    torch.testing.assert_close(drawn, weights, atol=5e-4, rtol=0)


def test_page_is_offline(page):
    path, _ = page
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)
    assert not re.search(r"\b(src|href)\s*=", text)


def test_clicking_another_head_changes_the_drawing(page, tmp_path):
    path, maps = page
    reader = _read(_run(["--dump-dom", f"{path.as_uri()}#selftest"], tmp_path))
    assert reader.selftest, "the page's self-test did not run"
    report = json.loads(reader.selftest)
    assert report["ok"], report
    assert report["head_before"] == 0 and report["head_after"] == 2
    # What is on screen now is head 2 of layer 0, cell for cell.
    assert reader.svg_attrs["data-layer"] == "0" and reader.svg_attrs["data-head"] == "2"
    assert reader.active_heads == ["2"]
    _assert_drawn(reader, maps[0].weights[2])


def test_url_fragment_selects_layer_head_and_highlighted_token(page, tmp_path):
    path, maps = page
    reader = _read(_run(["--dump-dom", f"{path.as_uri()}#layer=1&head=1&query=2"], tmp_path))
    assert reader.svg_attrs["data-layer"] == "1" and reader.svg_attrs["data-head"] == "1"
    _assert_drawn(reader, maps[1].weights[1])  # a cross-attention map: 4 target x 6 source
    # Target token 2 is highlighted as if hovered: each source token shaded by its weight.
    shades = torch.tensor([float(w) for w in reader.key_shades])
    torch.testing.assert_close(shades, maps[1].weights[1][2], atol=5e-4, rtol=0)


def test_screenshot_is_written(page, tmp_path):
    path, _ = page
    shot = tmp_path / "shot.png"
    _run(
        ["--hide-scrollbars", "--window-size=1000,900", f"--screenshot={shot}", path.as_uri()],
        tmp_path,
    )
    if not shot.exists():
        pytest.fail("chromium ran but wrote no screenshot")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
