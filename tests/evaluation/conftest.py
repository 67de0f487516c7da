"""Fixtures of the evaluation tests."""

from __future__ import annotations

import pytest
from chat_server import ChatServer


@pytest.fixture
def chat_server():
    """A chat-completions server on 127.0.0.1, shut down after the test."""
    server = ChatServer()
    yield server
    server.close()
