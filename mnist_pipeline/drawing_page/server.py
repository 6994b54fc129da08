"""The drawing page's server: a canvas in the browser, answered by a model that MLflow serves.

The browser posts a picture (the PNG of its canvas, or a PNG or JPEG file) to `/predict`.
This server sends it, base64-encoded in `dataframe_records`, to the one model URL it was
started with, and hands the answer back. The browser cannot choose where a request goes, so
this is not an open proxy. (It is needed at all because the scoring server sends no CORS
headers.)

The request asks the served model for details (`"params": {"details": true}`): the three
likeliest classes and the 28x28 image that the model's own transform made of the picture.
The page shows that image as it is, so there is no second copy of the preprocessing here or
in JavaScript.

Started with a Feedback (draw.py --feedback), the page also offers "right" and "wrong, it is
a ..." after each answer and posts the picture with its label to `/feedback`; this server
keeps it as a run of the feedback experiment (see mnist_pipeline/feedback.py) before it
answers, so that a drawing it accepted is in MLflow.
"""

from __future__ import annotations

import base64
import json
import shlex
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from mnist_pipeline.errors import UserError

STATIC_DIR = Path(__file__).resolve().parent / "static" / "draw"
# A phone's photo is a few MB; nothing the page sends needs more.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Bodies larger than MAX_BODY_BYTES are read and dropped up to this size, so that the client
# gets its 413; beyond it, the connection is cut.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0
# Drawings kept per second from one client address: more is a script, not a person.
FEEDBACK_PER_SECOND = 10
# One drawing is kept at a time; the others wait their turn, a tenth of a second each.
# SQLite writes one at a time anyway, and MLflow's SQL store opens a second database session
# inside some of its own (create_run): twenty drawings kept at once took every connection of
# its pool and waited for one another until the pool's 30 s timeout.
KEEPING_ONE_AT_A_TIME = threading.Lock()
SERVE_HINT = "mlflow models serve -m ./model --env-manager local -p {port}"
# Only what the page itself serves: no CDN, no inline script, nothing from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ModelError(Exception):
    """The model could not answer: `status` is the HTTP status for the page, the message one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_model_url(url: str) -> str:
    """Return the served model's base URL (`http://host:port`), or raise ValueError.

    A URL that ends in `/invocations` is accepted too: the page always posts there.
    """
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"model URL must look like http://127.0.0.1:5000, got {url!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"model URL must not have a query or a fragment, got {url!r}")
    try:
        valid_port = parsed.port != 0  # None: the scheme's own; urlsplit checks it when asked
    except ValueError:
        valid_port = False
    if not valid_port:
        raise ValueError(f"model URL has no valid port (1 to 65535), got {url!r}")
    path = parsed.path.rstrip("/")
    path = path.removesuffix("/invocations")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


class ModelClient:
    """Sends pictures to the one served model at `base_url` and reads its answers."""

    def __init__(self, base_url: str, timeout: float = DEFAULT_TIMEOUT):
        self.base_url = check_model_url(base_url)
        self.timeout = timeout
        # Straight to the model, whatever proxy the environment names: a workshop's
        # model runs on this machine, and a proxy would not reach it.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def port(self) -> int:
        """The model's port, for the command that serves it there."""
        parsed = urllib.parse.urlsplit(self.base_url)
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    @property
    def invocations_url(self) -> str:
        return f"{self.base_url}/invocations"

    def request_body(self, image: bytes) -> str:
        """Return the scoring request, as JSON, that asks about the picture `image`."""
        encoded = base64.b64encode(image).decode("ascii")
        return json.dumps({"dataframe_records": [{"image": encoded}], "params": {"details": True}})

    def curl_command(self, body: str) -> str:
        """Return the shell command that sends the request `body` to the model."""
        return (
            f"echo {shlex.quote(body)} | curl -s -H 'Content-Type: application/json' "
            f"-d @- {shlex.quote(self.invocations_url)}"
        )

    def ask(self, image: bytes) -> dict:
        """Return the model's answer about a PNG or JPEG picture, or raise ModelError.

        The answer holds class_name, probability, top (the three likeliest classes),
        pixels (base64 of the 28x28 image classified), the curl command, and model_ms.
        """
        body = self.request_body(image)
        request = urllib.request.Request(
            self.invocations_url,
            data=body.encode("ascii"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        started = time.perf_counter()
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise self._refusal(error) from None
        except TimeoutError:
            raise ModelError(
                504, f"The model at {self.base_url} did not answer within {self.timeout:g} s."
            ) from None
        except (urllib.error.URLError, ConnectionError) as error:
            raise self._unreachable(error) from None
        model_ms = (time.perf_counter() - started) * 1000
        record = _first_prediction(raw, self.base_url)
        answer = {
            "class_name": str(record["class_name"]),
            "probability": float(record["probability"]),
            "top": record.get("top")
            or [{"class_name": record["class_name"], "probability": record["probability"]}],
            "pixels": record.get("pixels", ""),
            "curl": self.curl_command(body),
            "model_ms": round(model_ms, 1),
            "note": "",
        }
        if "pixels" not in record:
            answer["note"] = (
                "This model was packaged before the drawing page existed: package it again "
                "to see the three likeliest classes and the 28x28 image it saw."
            )
        return answer

    def status(self) -> tuple[bool, str]:
        """Return whether the model server answers its /ping, and a line that says so."""
        try:
            with self._opener.open(f"{self.base_url}/ping", timeout=min(self.timeout, 3)) as r:
                if r.status == 200:
                    return True, f"Model at {self.base_url} is ready."
        except urllib.error.HTTPError as error:
            return False, f"The model at {self.base_url} answered its /ping with HTTP {error.code}."
        except TimeoutError:
            return False, f"The model at {self.base_url} did not answer its /ping in time."
        except (urllib.error.URLError, ConnectionError) as error:
            return False, str(self._unreachable(error))
        return False, f"The model at {self.base_url} is not ready."

    def _unreachable(self, error: Exception) -> ModelError:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            return ModelError(
                504, f"The model at {self.base_url} did not answer within {self.timeout:g} s."
            )
        if isinstance(reason, ConnectionRefusedError):
            reason = "connection refused"
        return ModelError(
            502,
            f"The model at {self.base_url} is not answering ({reason}). "
            f"Is it being served? {SERVE_HINT.format(port=self.port)}",
        )

    def _refusal(self, error: urllib.error.HTTPError) -> ModelError:
        text = error.read().decode("utf-8", errors="replace")
        try:
            message = str(json.loads(text).get("message", text))
        except (json.JSONDecodeError, AttributeError):
            message = text
        # The scoring server puts the model's one line after its own prefix, which
        # echoes the request: "Failed to predict data '...'. \nError: <line>".
        message = message.rpartition("Error: ")[2] if "Error: " in message else message
        line = message.strip().splitlines()[0] if message.strip() else f"HTTP {error.code}"
        if error.code == 400:
            return ModelError(400, f"The model could not read this picture: {line}")
        return ModelError(502, f"The model at {self.base_url} answered HTTP {error.code}: {line}")


@dataclass(frozen=True)
class Feedback:
    """Where the page keeps the drawings people confirm: an experiment, for a dataset's classes."""

    experiment_id: str
    experiment_name: str
    dataset: str  # mnist or fashion: the labels are its classes
    model_version: str = ""  # what answered, as the person who started the page names it

    @property
    def class_names(self) -> tuple[str, ...]:
        from mnist_pipeline.data.catalogue import dataset_spec

        return dataset_spec(self.dataset).class_names

    def not_a_class(self, answer: str) -> str:
        """Why the model's `answer` cannot be kept: most likely, a model of another dataset."""
        from mnist_pipeline.data.catalogue import DATASETS

        theirs = [name for name, spec in DATASETS.items() if answer in spec.class_names]
        if not theirs:
            return f"Answer {answer!r} is not one of the {self.dataset} classes of this page."
        return (
            f"The model answers {answer!r}, a class of {theirs[0]}, not {self.dataset}: "
            f"start draw.py with --dataset {theirs[0]}."
        )

    def label_of(self, text: str) -> int:
        """The class index that `text` names ("7"), or raise UserError."""
        count = len(self.class_names)
        # ASCII digits only: "²" and "３" pass str.isdigit, and int("²") fails. Python's int
        # refuses more than 4,300 digits.
        if not (text.isascii() and text.isdigit()) or len(text) > 6 or int(text) >= count:
            shown = text if len(text) <= 12 else f"{text[:12]}..."
            raise UserError(
                f"Label {shown!r} is not one of the model's classes: send a number from 0 to "
                f"{count - 1}."
            )
        return int(text)

    def keep(self, picture: bytes, label: int, answer: str) -> str:
        """Check that the served transform reads `picture`, log it; return the run's ID."""
        from mlflow.exceptions import MlflowException

        from mnist_pipeline.feedback import save_drawing
        from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

        # A picture that training and evaluation could not read is refused now, in one line.
        # The same rule as preprocess.py's: digits are fitted like MNIST, the rest like clothes.
        try:
            image_to_pixels(picture, "digit" if self.dataset == "mnist" else "object")
        except UserError as error:
            raise UserError(f"This picture cannot be kept: {error}") from None
        try:
            with KEEPING_ONE_AT_A_TIME:
                return save_drawing(
                    self.experiment_id,
                    picture,
                    label,
                    self.class_names[label],
                    answer,
                    self.model_version,
                    self.dataset,
                )
        except MlflowException as error:
            reason = error.message.strip().splitlines()[0]
            raise NotKept(f"MLflow could not keep the drawing ({reason}): send it again.") from None


class NotKept(Exception):
    """The tracking store refused to keep a drawing (busy, full, gone): worth trying again."""


class RateLimit:
    """At most `limit` requests in any `seconds` from one client address: a sliding window.

    Used from the event loop only, which runs one handler at a time, so it needs no lock.
    """

    def __init__(self, limit: int = FEEDBACK_PER_SECOND, seconds: float = 1.0):
        self.limit = limit
        self.seconds = seconds
        self.recent: dict[str, deque[float]] = {}

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        times = self.recent.setdefault(client, deque())
        while times and times[0] <= now - self.seconds:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


def _first_prediction(raw: bytes, base_url: str) -> dict:
    try:
        record = json.loads(raw)["predictions"][0]
        record["class_name"], record["probability"]  # noqa: B018 (both must be there)
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise ModelError(
            502, f"The server at {base_url} did not answer like an MLflow model of this project."
        ) from None
    return record


def create_app(
    model_url: str,
    timeout: float = DEFAULT_TIMEOUT,
    max_body: int = MAX_BODY_BYTES,
    feedback: Feedback | None = None,
):
    """Return the page's ASGI app: the page, its files, /model (status), /predict and, with
    `feedback`, /feedback."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    client = ModelClient(model_url, timeout)
    rate_limit = RateLimit()

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": message}, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})}
        )

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)

    async def model(request: Request) -> JSONResponse:
        ready, message = await run_in_threadpool(client.status)
        status = {"url": client.base_url, "ready": ready, "message": message, "max_bytes": max_body}
        status["timeout"] = client.timeout  # the page waits a little longer for /predict
        status["feedback"] = feedback is not None
        status["class_names"] = list(feedback.class_names) if feedback else []
        return JSONResponse(status, headers=SECURITY_HEADERS)

    async def read_picture(request: Request) -> bytes | JSONResponse:
        """The request's body, or the response that refuses it (413: too large, 400: empty)."""
        too_large = f"The picture is larger than the {max_body / 2**20:g} MB this page accepts."
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > DRAIN_LIMIT_BYTES:
            return error(413, too_large)
        # A body that is too large is still read to its end, and thrown away: a client
        # that is still sending when the answer comes (a browser, urllib) would see a
        # broken connection instead of the 413.
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN_LIMIT_BYTES:
                return error(413, too_large)
            if size <= max_body:
                chunks.append(chunk)
        if size > max_body:
            return error(413, too_large)
        if size == 0:
            return error(400, "Nothing to classify: draw something, or choose a picture.")
        return b"".join(chunks)

    async def predict(request: Request) -> JSONResponse:
        image = await read_picture(request)
        if isinstance(image, JSONResponse):
            return image
        try:
            answer = await run_in_threadpool(client.ask, image)
        except ModelError as refused:
            return error(refused.status, str(refused))
        return JSONResponse(answer, headers=SECURITY_HEADERS)

    async def keep(request: Request) -> JSONResponse:
        """POST /feedback?label=7&answer=1, the picture as the body: keep it in MLflow."""
        if feedback is None:
            return error(404, "Feedback is off: start draw.py with --feedback to keep drawings.")
        picture = await read_picture(request)
        if isinstance(picture, JSONResponse):
            return picture
        address = request.client.host if request.client else "unknown"
        if not rate_limit.allow(address):
            return error(
                429,
                f"Too many drawings from {address}: at most {rate_limit.limit} a second. "
                "Wait a moment, then send it again.",
                {"Retry-After": "1"},
            )
        answer = request.query_params.get("answer", "")
        if answer and answer not in feedback.class_names:
            return error(400, feedback.not_a_class(answer))
        try:
            label = feedback.label_of(request.query_params.get("label", ""))
            # Answered only once the drawing's run has ended FINISHED: a 200 means it is kept.
            run_id = await run_in_threadpool(feedback.keep, picture, label, answer)
        except UserError as refused:
            return error(400, str(refused))
        except NotKept as refused:
            return error(503, str(refused))
        class_name = feedback.class_names[label]
        message = f"Kept as {class_name} in the experiment '{feedback.experiment_name}'. Thank you!"
        return JSONResponse(
            {"run_id": run_id, "label": label, "class_name": class_name, "message": message},
            headers=SECURITY_HEADERS,
        )

    return Starlette(
        routes=[
            Route("/", page),
            Route("/model", model),
            Route("/predict", predict, methods=["POST"]),
            Route("/feedback", keep, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
    )
