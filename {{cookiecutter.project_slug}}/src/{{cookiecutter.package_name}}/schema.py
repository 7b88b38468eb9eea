"""Every table of the service in one ``MetaData``, for alembic and the migration tests.

The models live with the code that owns them (``db/models.py``, ``outbox/models.py``); a table
only joins ``Base.metadata`` once its module is imported, so whatever compares the database
with the models must import them all: this module does.
"""

from __future__ import annotations

from .db.models import Base
from .outbox import models as outbox_models

metadata = Base.metadata

__all__ = ["metadata", "outbox_models"]
