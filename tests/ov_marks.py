"""The skip mark of tests that need OpenVINO with nncf (int8 weights, int8 activations)."""

from __future__ import annotations

import importlib.util

import pytest

from imgtools_mcp.engine.backends import backend_classes
from imgtools_mcp.engine.device import probe

why_not = backend_classes()["openvino"].unavailable(probe("cpu")) or (
    None if importlib.util.find_spec("nncf") else "the nncf package is not installed"
)
needs_nncf = pytest.mark.skipif(why_not is not None, reason=f"OpenVINO int8: {why_not}")
