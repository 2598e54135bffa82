"""The converted tiny ChatGLM-6B fixture, made once per module that asks for it."""
import pytest

from glm_ms.convert.driver import convert_checkpoint
from tests.convert.upstream import FIXTURE


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "tiny-ms"
    return convert_checkpoint(FIXTURE, out, progress=False)
