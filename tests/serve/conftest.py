"""Session-wide test servers, one per (family, engine options), started on first use."""
import contextlib

import pytest

from tests.serve.servers import serving


@pytest.fixture(scope="session")
def servers():
    """`servers(family, **engine_options)` → (Server, ChatService), shared by every test asking the same."""
    cache = {}
    with contextlib.ExitStack() as stack:
        def get(family, **options):
            key = (family, tuple(sorted(options.items())))
            if key not in cache:
                cache[key] = stack.enter_context(serving(family, **options))
            return cache[key]
        yield get
