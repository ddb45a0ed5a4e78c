"""The asyncio client, where it was before :mod:`rotator.client` became a package."""

from __future__ import annotations

from rotator.client.asyncio import AsyncTokenClient

__all__ = ["AsyncTokenClient"]
