"""The HTTP side of ``medadapt annotate``: FastAPI routes over an :class:`~medadapt.app.session.Annotator`.

The server binds 127.0.0.1 unless told otherwise and answers only requests
addressed to a loopback name (a web page elsewhere cannot reach it through
DNS rebinding). It serves its own static folder and the data it was given,
by the opaque ids of its own listing; no route takes a file path. Errors are
JSON ``{"detail": "..."}``: 404 for an unknown image id or slice, 400 for a
request the data refuses (a prompt outside the image, an unknown class,
malformed JSON), 422 for a body of the wrong shape, 413 for a body larger than
:data:`MAX_BODY_BYTES` (read no further than that).
"""

from __future__ import annotations

import ipaddress
import socket
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union
from urllib.parse import urlsplit

import torch

from ..core.errors import MedAdaptError

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field
except ImportError as exc:  # the web app is an optional extra
    raise MedAdaptError(f"medadapt annotate needs FastAPI and uvicorn ({exc}): pip install 'medadapt[app]'") from exc

from ..inference import Segmenter
from ..training import OnlineConfig
from .learning import accept_hook, online_segmenter, stop_learning
from .session import Annotator, OnAccept
from .sources import UnknownItem, find_items
from .store import LabelsLock

STATIC = Path(str(resources.files("medadapt") / "app" / "static"))
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 2 * 1024 * 1024  # the largest request the page sends, a 20000-point scribble, is about 0.8 MB


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Coordinate = Annotated[float, Field(allow_inf_nan=False)]


class PointPrompt(_Body):
    kind: Literal["point"]
    x: Coordinate
    y: Coordinate
    label: Literal[0, 1] = 1


class BoxPrompt(_Body):
    kind: Literal["box"]
    x0: Coordinate
    y0: Coordinate
    x1: Coordinate
    y1: Coordinate


class ScribblePrompt(_Body):
    kind: Literal["scribble"]
    points: list[tuple[Coordinate, Coordinate]] = Field(min_length=1, max_length=20000)
    label: Literal[0, 1] = 1


class PromptRequest(_Body):
    class_name: str
    prompt: Annotated[Union[PointPrompt, BoxPrompt, ScribblePrompt], Field(discriminator="kind")]


class ClassChoice(_Body):
    class_name: str | None = None
    keep: bool = False  # class_name is for a new object only: an object on the slice keeps its own class


class AcceptRequest(_Body):
    class_name: str


class NewClass(_Body):
    name: str


def _validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        return 400, f"malformed JSON body: {bad_json.get('ctx', {}).get('error', bad_json.get('msg'))}; send a JSON object"
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors[:5]]
    return 422, "invalid request: " + "; ".join(parts)


def _host_name(header: str) -> str | None:
    """The name in a Host header, lower case, without port or IPv6 brackets (``[::1]:8000`` is ``::1``)."""
    try:
        return urlsplit("//" + header).hostname
    except ValueError:
        return None


def _cross_site(request: Request) -> bool:
    """Whether the browser says the request came from a page of another origin than this server's."""
    if request.headers.get("sec-fetch-site", "") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None:  # not sent by a browser's cross-origin request (curl, the tests, same-origin GET forms)
        return False
    host = request.headers.get("host", "")
    return origin == "null" or urlsplit(origin).netloc.lower() != host.lower()


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 without being read further (a declared
    Content-Length over it is refused before any byte is read); a body within it is handed on whole."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        if not declared.isdigit():
            return await self._answer(send, 400, "invalid Content-Length header: send a whole number of bytes")
        too_large = f"request body too large (the limit is {self.limit} bytes): send a shorter scribble"
        if int(declared) > self.limit:
            return await self._answer(send, 413, too_large)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._answer(send, 413, too_large)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _answer(send, status: int, detail: str) -> None:
        payload = JSONResponse({"detail": detail}).body
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def create_app(annotator: Annotator, *, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The web app; ``allowed_hosts`` are the Host names it answers (default: loopback names only)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        annotator.close()

    app = FastAPI(title="medadapt annotate", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)  # before any route reads a body
    hosts = {h.lower() for h in (allowed_hosts or LOOPBACK)}

    @app.middleware("http")
    async def same_origin_writes(request: Request, call_next):
        """Requests must name this server by a name it answers (a web page cannot reach it through DNS
        rebinding), and a request that changes labels, objects or the model must come from this app's own
        page: a web page elsewhere that the user has open could otherwise send one to the local server."""
        if "*" not in hosts and _host_name(request.headers.get("host", "")) not in hosts:
            return JSONResponse({"detail": "invalid Host header: open the app at the address medadapt annotate "
                                           "printed"}, status_code=400)
        if request.method not in ("GET", "HEAD", "OPTIONS") and _cross_site(request):
            return JSONResponse({"detail": "refused: a request that changes state must come from this app's own "
                                           "page (Origin / Sec-Fetch-Site say it came from another site)"},
                                status_code=403)
        return await call_next(request)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(MedAdaptError)
    async def refused(request: Request, exc: MedAdaptError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404 if isinstance(exc, UnknownItem) else 400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail = _validation_detail(exc)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return annotator.state()

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        return annotator.model_state()

    @app.post("/api/classes")
    def add_class(body: NewClass) -> dict[str, Any]:
        return annotator.add_class(body.name)

    base = "/api/items/{item_id}/slices/{k}"

    @app.post(base + "/open")
    def open_slice(item_id: str, k: int, body: ClassChoice) -> dict[str, Any]:
        return annotator.open(item_id, k, body.class_name, keep=body.keep)

    @app.get(base + "/pixels")
    def pixels(item_id: str, k: int) -> Response:
        data, (h, w, c) = annotator.pixels(item_id, k)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Height": str(h), "X-Width": str(w), "X-Channels": str(c)})

    @app.post(base + "/prompts")
    def add_prompt(item_id: str, k: int, body: PromptRequest) -> dict[str, Any]:
        return annotator.prompt(item_id, k, body.class_name, body.prompt.model_dump())

    @app.post(base + "/undo")
    def undo(item_id: str, k: int) -> dict[str, Any]:
        return annotator.undo(item_id, k)

    @app.post(base + "/clear")
    def clear(item_id: str, k: int) -> dict[str, Any]:
        return annotator.clear(item_id, k)

    @app.post(base + "/accept")
    def accept(item_id: str, k: int, body: AcceptRequest) -> dict[str, Any]:
        return annotator.accept(item_id, k, body.class_name)

    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: ``localhost`` or a loopback address however it is spelled
    (``127.0.0.2``, ``0:0:0:0:0:0:0:1``). Such a server keeps its Host check against DNS rebinding."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise MedAdaptError(f"--port must be a TCP port number 1..65535; got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MedAdaptError(f"--host {host!r} is not an address of this machine: {exc}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            raise MedAdaptError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port") from None


def serve(annotator: Annotator, host: str = "127.0.0.1", port: int = 8000, *, log: Callable[[str], Any] = print) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    _check_port(host, port)
    loopback = is_loopback(host)
    if not loopback:
        log(f"warning: listening on {host}: anyone who can reach this machine on port {port} can read these images "
            "and write labels (there is no login); the default --host 127.0.0.1 keeps it to this machine")
    app = create_app(annotator, allowed_hosts=[*LOOPBACK, host] if loopback else ["*"])
    shown = "127.0.0.1" if host.lower() == "localhost" else f"[{host}]" if ":" in host else host
    log(f"open http://{shown}:{port}/ in a browser (Ctrl+C stops the server)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def serving_threads(worker_threads: int) -> int | None:
    """Torch threads for the threads that serve requests beside a learner that trains with ``worker_threads``:
    the cores it leaves (at least one); None (torch's default) when the worker takes the process default."""
    if not worker_threads:
        return None
    return max(1, torch.get_num_threads() - worker_threads)


def threads_beside(learner) -> Callable[[], int]:
    """Torch threads for each request: all of this process's while the learner is between steps, the cores
    its step leaves while one runs."""
    full, fewer = torch.get_num_threads(), serving_threads(learner.config.worker_threads)
    return lambda: fewer if learner.training and fewer is not None else full


def annotate(data, *, adapter=None, model: str = "litemedsam", checkpoint=None, host: str = "127.0.0.1",
             port: int = 8000, labels=None, axis: int = 2, window=None, device: str | None = None,
             learn: bool = True, local: bool = False, online: OnlineConfig | dict | None = None,
             on_accept: OnAccept | None = None, model_version: Callable[[], Any] | None = None,
             log: Callable[[str], Any] = print) -> None:
    """``medadapt annotate``: load the model, list DATA and serve the annotation page.

    ``learn``: every accepted mask trains the model online (:mod:`medadapt.app.learning`; its replay
    buffer and adapter in ``LABELS/online/``), unless ``on_accept`` is given; ``False`` serves the model
    as loaded, optimised for inference. ``online``: how the learner trains (:class:`~medadapt.training.OnlineConfig`
    or its fields as a dict; its defaults otherwise). ``local``: clicks change the mask only near them."""
    source = find_items(data, labels, axis)  # a wrong DATA fails before the model loads
    _check_port(host, port)
    if online is not None:
        if not learn or on_accept is not None:
            raise MedAdaptError("online learner settings (--online) need the app's online learner: drop --no-learn "
                                "(learn=False) and on_accept")
        online = online if isinstance(online, OnlineConfig) else OnlineConfig.from_dict(online)  # typos fail here
    hold = LabelsLock(source.labels_dir)  # a second server on these labels fails here, before the model loads
    learner = None
    try:
        if learn and on_accept is None:
            seg, learner = online_segmenter(model, Path(source.labels_dir) / "online", adapter=adapter,
                                            checkpoint=checkpoint, device=device, config=online, log=log)
            model_version = lambda: learner.version  # noqa: E731
        else:
            seg = Segmenter.from_pretrained(model, checkpoint=checkpoint, adapter=adapter, device=device)
        annotator = Annotator(seg, data, labels=labels, axis=axis, window=window, on_accept=on_accept,
                              model_version=model_version, model_name=model, local=local, labels_lock=hold,
                              lock=None if learner is None else learner.lock,
                              threads=None if learner is None else threads_beside(learner))
    except BaseException:
        try:
            if learner is not None:
                learner.stop()
        finally:
            hold.release()
        raise
    if learner is not None:
        annotator.on_accept = accept_hook(learner, annotator.classes)
        learner.pause = annotator.busy  # the learner's steps wait until the user pauses
        log(f"online learning on: accepted masks train the model in the background ({learner.folder})")
    log(f"{len(source.items)} images from {data}; accepted labels go to {source.labels_dir}")
    try:
        serve(annotator, host, port, log=log)
    finally:
        try:
            problems = [p for p in (_close(annotator), None if learner is None else stop_learning(learner, log)) if p]
        finally:
            hold.release()  # only once the learner has saved into LABELS/online
        for p in problems:
            log(f"error: {p}")
    if problems:
        raise MedAdaptError("; ".join(problems))


def _close(annotator: Annotator) -> str | None:
    """Stop the annotator's background encoding; what went wrong, or None."""
    try:
        annotator.close()
    except Exception as exc:  # the learner must still stop and save
        return f"the background encoder did not stop cleanly ({exc})"
    return None


__all__ = ["annotate", "create_app", "serve"]
