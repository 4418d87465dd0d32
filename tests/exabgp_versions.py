"""The ExaBGP versions the BGP tests run under: pip's 5.0 (the venv's) and Debian's 4.2.

ExaBGP 4.2 is skipped where /usr/sbin/exabgp is missing, except in CI (`CI` set), where
deploy/test installs it and a missing one must fail.
"""

from __future__ import annotations

import os

import pytest

from raftvip.testing.bgplab import EXABGP4_BINARY

requires_exabgp4 = pytest.mark.skipif(
    not os.access(EXABGP4_BINARY, os.X_OK) and not os.environ.get("CI"),
    reason="ExaBGP 4.2 (Debian package `exabgp`, /usr/sbin/exabgp) is not installed; "
    "deploy/test installs it",
)

# For @pytest.mark.parametrize / fixture params: 4 (Debian's 4.2) and 5 (pip's 5.0).
EXABGP_VERSIONS = [
    pytest.param(4, id="exabgp4", marks=requires_exabgp4),
    pytest.param(5, id="exabgp5"),
]
