"""``POST /api/v1/audit/reprocess`` and ``GET /api/v1/jobs/{id}``: background jobs.

An admin asks for the ignored webhooks of one project (on one of the organization's
connections) to be processed again, typically right after mapping it; the answer is ``202``
with the job's id, and the job runs in the replay package's worker (``blametrail-replay-jobs``)
with the same code as ``blametrail replay reprocess-ignored``. ``GET /api/v1/jobs/{id}`` shows
its state and counts. Another organization's connection or job is a 404; a second job for the
same project while one is queued or running is a 409 naming it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from blametrail_mappings_api.api.deps import Admin, Api
from blametrail_mappings_api.api.problems import answers
from blametrail_mappings_api.api.route import ApiRoute
from blametrail_mappings_api.api.shapes import plain
from blametrail_mappings_api.schemas import _In
from blametrail_mappings_api.store.jobs import JobStore

__all__ = ["JobOut", "ReprocessBody", "router"]

router = APIRouter(tags=["jobs"], route_class=ApiRoute)


class ReprocessBody(_In):
    connection_id: Annotated[str, Field(min_length=1, max_length=100)]
    # Sentry project slugs are at most 50 characters; a longer one cannot have been seen
    project_slug: Annotated[str, Field(min_length=1, max_length=100)]


class JobCreated(BaseModel):
    job_id: str


class JobOut(BaseModel):
    job_id: str
    kind: str
    state: Literal["queued", "running", "done", "failed"]
    total: int | None
    """Raw webhooks in the window read (null until the worker knows)."""
    processed: int
    """Of them read so far."""
    republished: int
    """Ignored webhooks of the project normalized again (incidents follow)."""
    still_ignored: int
    """Ignored webhooks of the project still ignored (no active mapping when the job ran)."""
    error: str | None
    attempt: int
    """How many times a worker took the job (more than 1: a worker died and another re-ran it)."""
    params: dict[str, str]
    created_at: str
    started_at: str | None
    finished_at: str | None


def _store(api: Api) -> JobStore:
    return JobStore(api.repo.pool)


@router.post(
    "/api/v1/audit/reprocess",
    summary="Process again the ignored (unmapped or inactive) webhooks of one Sentry project",
    status_code=202,
    response_model=JobCreated,
    responses=answers(404, 409, 422),
)
async def reprocess(api: Admin, body: ReprocessBody) -> Response:
    p = api.principal
    row = await _store(api).reprocess_ignored(
        api.org, body.connection_id, body.project_slug, f"{p.kind}:{p.id}"
    )
    return JSONResponse({"job_id": str(row["job_id"])}, status_code=202)


@router.get(
    "/api/v1/jobs/{id}",
    summary="A background job: state, progress and counts",
    response_model=JobOut,
    responses=answers(404),
)
async def get_job(api: Api, id: str) -> Response:
    return JSONResponse(plain(await _store(api).get(api.org, id)))
