"""A model sent as JSON, serialized once.

An endpoint that returns a model (or a dict) has FastAPI validate it against the response model
again and then serialize it. Returning ``json_response(model)`` skips that second pass: pydantic
writes the validated model straight to JSON bytes. Declare ``response_model=`` on the route so
the OpenAPI schema still says what the answer is.
"""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
