"""``gc.freeze()`` after startup: full collections stop walking the objects startup created.

Everything alive once the lifespan has started (modules, the app, the ORM's mappings, pools)
lives as long as the process. Without a freeze it all sits in the oldest generation, and every
full collection walks it again, on the event loop's thread, while every request waits. How long a
pass takes depends on the machine (``bench/load.py`` measures it); how much it has to walk does
not, and that is what these tests count.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from .conftest import make_settings, running_app

# Startup objects of this service number in the tens of thousands; the bound only needs to
# separate "everything" from "a few stragglers created after the freeze".
STARTUP_OBJECTS = 10_000


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Start and end each test with nothing frozen: the freeze is global to the process."""
    gc.unfreeze()
    yield
    gc.unfreeze()


async def test_startup_objects_are_frozen_out_of_full_collections(
    database_url: str, unfrozen: None
) -> None:
    settings = make_settings(database_url, gc_freeze=True)

    async with running_app(settings):
        frozen = gc.get_freeze_count()
        oldest_generation = len(gc.get_objects(generation=2))

    assert frozen > STARTUP_OBJECTS
    # What a full collection still walks is a small fraction of what startup left behind.
    assert oldest_generation < frozen / 10


@pytest.mark.pitfall
async def test_pitfall_without_a_freeze_every_full_collection_walks_the_startup_heap(
    database_url: str, unfrozen: None
) -> None:
    settings = make_settings(database_url, gc_freeze=False)

    async with running_app(settings):
        gc.collect()  # what any full collection during a request would do
        frozen = gc.get_freeze_count()
        oldest_generation = len(gc.get_objects(generation=2))

    assert frozen == 0
    assert oldest_generation > STARTUP_OBJECTS
