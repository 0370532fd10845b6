"""The edge's lifespan tunes the cyclic garbage collector while it serves and puts it back after."""

from __future__ import annotations

import gc

from edge.app import GC_GROWTH, create_app
from heartline.settings import Settings


async def test_the_edge_serves_with_its_startup_objects_frozen_and_a_higher_gc_threshold(
        edge_settings: Settings) -> None:
    before = gc.get_threshold()
    application = create_app(edge_settings)
    async with application.router.lifespan_context(application):
        assert gc.get_threshold() == (GC_GROWTH, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
