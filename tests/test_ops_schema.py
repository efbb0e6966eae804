"""The op schemas registered by the compiled extension match the Python definitions."""

import pytest
import torch

from attnzoo import ops
from attnzoo.ops.schemas import SCHEMAS


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_matches(name):
    op = getattr(torch.ops.attnzoo, name).default
    assert str(op._schema) == f"attnzoo::{SCHEMAS[name]}"


def test_build_info():
    info = ops.build_info()
    if not ops.EXTENSION:
        pytest.skip(f"extension not built: {ops.EXTENSION_STATUS}")
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert ops.compiled_devices()[0] == "cpu"
