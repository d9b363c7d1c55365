"""The HTTP face of ``tinycats serve``: a JSON API and one web page, as a FastAPI (ASGI) app.

    GET  /                the web page (serve_page.html)
    GET  /api/health      {"status": "ok"}
    GET  /api/models      the loaded runs: kind, run, checkpoint, step, metrics, classes
    POST /api/classify    photos as multipart ``file`` fields → a label and probabilities each
    GET  /api/draw        breed, n, steps, cfg_scale, seed (, run) → a PNG grid

Every refusal is a 4xx with ``{"detail": message}``; no request can stop the server. A client
over its budget (``serve_budget.py``) gets 429 with ``Retry-After``.
"""

import logging
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tinycats.commands.serve_budget import NO_BUDGET, Budget, ClientBudgets
from tinycats.commands.serve_models import BadRequest, ModelStore, classify, decode_photo, draw

log = logging.getLogger(__name__)

PAGE = "serve_page.html"
# Multipart framing around a photo (boundaries, headers): allowed on top of the byte limit.
MULTIPART_OVERHEAD = 64 * 1024


def build_app(store: ModelStore, budget: Budget = NO_BUDGET) -> FastAPI:
    """The app answering from the runs in ``store``, each client within ``budget``."""
    app = FastAPI(title="tinycats", summary="Classify cat photos and draw cats with trained runs.")
    # A body over the limit is refused by FastAPI's route limit (max_body_size), also when it
    # streams without a length; the middleware refuses a declared length first, with the numbers.
    allowed = store.limits.max_files * store.limits.max_upload_bytes + MULTIPART_OVERHEAD
    _answer_refusals_in_json(app)
    _refuse_bodies_over(allowed, app)
    _refuse_clients_over(budget, app)  # added last, so it runs first
    _add_page_and_listings(store, app)
    _add_classify(store, allowed, app)
    _add_draw(store, app)
    return app


def _answer_refusals_in_json(app: FastAPI) -> None:
    """Answer every refusal with its status and ``{"detail": one readable sentence}``."""

    @app.exception_handler(BadRequest)
    async def refused(request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # One readable sentence per problem ("n: Input should be less than or equal to 16").
        problems = [f"{e['loc'][-1]}: {e['msg']}" for e in err.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


def _refuse_bodies_over(allowed: int, app: FastAPI) -> None:
    """Answer 413 to a request whose declared length is over ``allowed`` bytes."""

    @app.middleware("http")
    async def refuse_big_bodies(request: Request, call_next):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > allowed:
            return JSONResponse(
                {"detail": f"The request has {declared} bytes; the limit is {allowed}."},
                status_code=413,
            )
        return await call_next(request)


def _add_page_and_listings(store: ModelStore, app: FastAPI) -> None:
    """``/`` (the page), ``/api/health`` and ``/api/models``."""
    page = files("tinycats.commands").joinpath(PAGE).read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/models")
    def models() -> dict[str, Any]:
        return {"runs_root": str(store.runs_root), "models": store.describe()}


def _add_classify(store: ModelStore, allowed: int, app: FastAPI) -> None:
    """``POST /api/classify``: photos as multipart ``file`` fields → a label and probabilities."""
    limits = store.limits

    @app.post("/api/classify", max_body_size=allowed)
    async def classify_photos(
        file: Annotated[list[UploadFile], File(description="one or more photos")],
        run: Annotated[
            str | None, Query(description="a classifier run; default: the loaded one")
        ] = None,
    ) -> dict[str, Any]:
        if len(file) > limits.max_files:
            raise BadRequest(
                413, f"{len(file)} photos in one request; the limit is {limits.max_files}."
            )
        loaded = await run_in_threadpool(store.get, "classifier", run)
        photos = []
        for upload in file:
            data = await upload.read(limits.max_upload_bytes + 1)
            try:
                photos.append(decode_photo(data, loaded.image_size, limits))
            except BadRequest as err:
                raise BadRequest(err.status, f"{upload.filename}: {err}") from None
        results = await run_in_threadpool(classify, loaded, photos)
        named = [{"filename": u.filename} | r for u, r in zip(file, results, strict=True)]
        return {"run": loaded.run, "step": loaded.step, "results": named}


def _add_draw(store: ModelStore, app: FastAPI) -> None:
    """``GET /api/draw``: a PNG grid of cats of a breed (``guidance`` is ``cfg_scale``'s old name)."""
    limits = store.limits

    @app.get("/api/draw", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def draw_cats(
        breed: Annotated[str, Query(description="a breed the DiT knows, e.g. Bengal")],
        n: Annotated[int, Query(ge=1, le=limits.max_n)] = 8,
        steps: Annotated[int, Query(ge=1, le=limits.max_steps)] = 25,
        cfg_scale: Annotated[float, Query(ge=0, le=20)] = 3.0,
        seed: Annotated[int, Query(ge=0, lt=2**63)] = 0,
        run: Annotated[str | None, Query(description="a DiT run; default: the loaded one")] = None,
        guidance: Annotated[
            float | None, Query(ge=0, le=20, deprecated=True, description="use cfg_scale")
        ] = None,
    ) -> Response:
        if guidance is not None:
            log.warning("/api/draw?guidance= is deprecated: use cfg_scale=.")
            cfg_scale = guidance
        loaded = store.get("dit", run)
        png = draw(loaded, breed, n, steps, cfg_scale, seed)
        return Response(
            png, media_type="image/png", headers={"X-Run": loaded.run, "X-Step": str(loaded.step)}
        )


def _refuse_clients_over(budget: Budget, app: FastAPI) -> None:
    """Answer 429 with ``Retry-After`` to a client over ``budget``, before anything else runs.

    The client is the connection's address. On Modal that is the address Modal's proxy saw,
    which it puts in the ASGI scope (an X-Forwarded-For the client sent is not passed on), so a
    client cannot choose its address by sending a header.
    """
    log.info("Per-client budget: %s", budget.describe())
    budgets = ClientBudgets(budget)

    @app.middleware("http")
    async def within_budget(request: Request, call_next):
        client = request.client.host if request.client else "unknown"
        # Counted on the event loop's one thread: no lock needed.
        refusal = budgets.charge(client, drawing=request.url.path == "/api/draw")
        if refusal:
            return JSONResponse(
                {"detail": refusal.message},
                status_code=429,
                headers={"Retry-After": str(refusal.retry_after_s)},
            )
        return await call_next(request)
