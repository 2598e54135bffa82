"""The one fixture system of the suite (see tests/support.py): `family` parametrizes over every family,
`tiny_family` gives that family's fixture; the ChatGLM-6B shorthands below are the same objects."""
import pytest

from tests.support import ADAPTERS, FAMILIES, FAMILY_FOLDERS, adapted, tiny


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    """Each model family in turn."""
    return request.param


@pytest.fixture(scope="session")
def tiny_family(family):
    """The tiny fixture of the current `family`."""
    return tiny(family)


@pytest.fixture(scope="session")
def tiny_dir():
    return FAMILY_FOLDERS["chatglm-6b"]


@pytest.fixture(scope="session")
def golden():
    return tiny("chatglm-6b").golden


@pytest.fixture(scope="session")
def golden_json():
    return tiny("chatglm-6b").golden_json


@pytest.fixture(scope="session")
def model():
    return tiny("chatglm-6b").model


@pytest.fixture(scope="session")
def tokenizer():
    return tiny("chatglm-6b").tokenizer


@pytest.fixture(scope="session", params=ADAPTERS)
def adapter_case(request):
    """Each adapter fixture (LoRA and P-tuning v2) applied to its base, in turn."""
    return adapted(request.param)
