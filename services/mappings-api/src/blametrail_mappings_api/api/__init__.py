"""The REST API under ``/api/v1``: one FastAPI ``APIRouter`` per resource (:mod:`.services`,
:mod:`.connections`, :mod:`.mappings`, :mod:`.incidents`, :mod:`.deploys`, :mod:`.audit`).

Handlers only take the parsed request, call a store and shape the answer. How every request is
taken (key, then body) is :mod:`.route`'s; the error bodies and their OpenAPI models are
:mod:`.problems`'; the app that mounts it all is :mod:`blametrail_mappings_api.app`.
"""
