"""report.html renders in headless Chromium with no console errors, and its inlined images decode."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from host.campaign.config import CampaignConfig
from host.campaign.progress import LogProgress
from host.campaign.runner import CampaignRunner
from host.store import CampaignStore
from tests.campaign_support import model, noise_search, seeds
from tests.chromium import find_chromium, render

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None,
                       reason="headless Chromium not installed (apt-get install -y chromium; .ci/run does it)"),
]

_DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
_SVG_URI = re.compile(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    cfg = CampaignConfig(model("digits32rgb", "float32"), model("digits32rgb", "int8"), seeds("digits32rgb"),
                         out=out, limit=6, max_queries=1500)
    CampaignRunner(cfg, search=noise_search, progress=LogProgress(io.StringIO())).run()
    return out


def test_report_renders_without_console_errors(campaign: Path, tmp_path: Path) -> None:
    with CampaignStore.open_existing(campaign) as store:
        inputs = store.inputs()
    assert inputs, "the campaign should have found at least one deviating input to show"
    shot = tmp_path / "report.png"
    page = render(campaign / "report.html", screenshot=shot)
    assert page.console == []
    # The browser built the whole page: header, summary, plots and one gallery entry per input.
    assert "dflare-edge campaign report" in page.dom
    assert f'<div class="n" id="triggered-count">{sum(i.status.value == "triggered" for i in inputs)}</div>' in page.dom
    for record in inputs:
        assert f'id="input-{record.seed_index}-{record.n}"' in page.dom
    # Every inlined image is a valid PNG (a broken data URI would render as an empty box, silently).
    # the analysis: flip table, per-class rates, distance histogram; minimized inputs beside the raw ones
    for anchor in ('id="flip-table"', 'id="per-class"', 'id="distance-histogram"', 'id="operators"'):
        assert anchor in page.dom
    triggered = [i for i in inputs if i.status.value == "triggered"]
    assert page.dom.count('alt="minimized mutant"') == len(triggered) > 0
    uris = _DATA_URI.findall(page.dom)
    # seed, raw mutant and difference per input; minimized mutant and its difference per triggered one
    assert len(uris) >= 3 * len(inputs) + 2 * len(triggered)
    for uri in uris:
        Image.open(io.BytesIO(base64.b64decode(uri))).verify()
    # three plots, as SVG that parses and draws something (bars or a line)
    charts = [ElementTree.fromstring(base64.b64decode(uri)) for uri in _SVG_URI.findall(page.dom)]
    assert len(charts) == 3
    for chart in charts:
        assert chart.tag.endswith("svg") and any(e.tag.endswith(("rect", "polyline")) for e in chart.iter())
    # The screenshot is a real rendering, not a blank page.
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape[1] == 1280 and pixels.std() > 10
