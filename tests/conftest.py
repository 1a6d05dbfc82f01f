"""Shared test settings."""

from __future__ import annotations

import os

import pytest
import torch

from perspective_unet.data.dicom import preserved_locale
from perspective_unet.models.ops import onednn_linear

# Under pytest-xdist every worker is a process of its own: one thread each keeps the cores from being oversubscribed,
# which makes OpenMP's spinning threads orders of magnitude slower. A single process uses up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _keep_the_locale():
    # Tests that write DICOM through SimpleITK (GDCM) would leave the process in the "C" locale, where Python opens
    # text files as ASCII; later tests (torch.compile reads UTF-8 templates) must not depend on the order.
    with preserved_locale():
        yield


@pytest.fixture(autouse=True)
def _onednn_routes_as_on_x86():
    # The oneDNN routes default to "always" on x86-64 with AVX-512 and "off" elsewhere; tests run with the routes on
    # wherever oneDNN is present, so that they are checked on every platform, and no test leaks a mode into the next.
    with onednn_linear("always"):
        yield
