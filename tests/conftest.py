import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
sys.path.insert(0, str(FIXTURES))  # make_weights.py, the reference's weight rule


def load_fixture(name: str):
    return torch.load(FIXTURES / name, weights_only=True)


def tol(dtype):
    """The parity tolerances: fp32 1e-5 (rel and abs), fp64 1e-10."""
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


def assert_close(actual, expected, **kw):
    expected = torch.as_tensor(expected)
    opts = tol(expected.dtype)
    opts.update(kw)
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, **opts)


@pytest.fixture(scope="session")
def head_fixture():
    return load_fixture("gfl_head.pt")
