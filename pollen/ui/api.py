"""The dashboard's HTTP API (FastAPI; OpenAPI at ``/api/openapi.json``) and its static page.

Every ``/api`` call needs a token (``Authorization: Bearer …``): a read-only token may call every
GET; state changes are POSTs and need the control token. A missing or wrong token gets 401 and
nothing else, checked before the request's body is read. New settings are validated with the
run's own config model (the same ranges and messages as the command line).

(No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations,
which name classes imported inside :func:`create_app`.)
"""

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from pollen.errors import ConfigError, PollenError, RunError, require
from pollen.ui.auth import CONTROL, Tokens
from pollen.ui.runs import RunsIndex

TITLE = "Pollen dashboard API"
MAX_PARTIES = 100_000


def static_dir() -> Path:
    """The folder of the page's HTML, JS, CSS and the vendored uPlot."""
    return Path(str(resources.files("pollen.ui") / "static"))


def create_app(index: RunsIndex, tokens: Tokens, launcher: Any = None) -> Any:
    """The FastAPI application.

    Args:
        index: the runs it shows (run folders and live runs).
        tokens: who may read and who may steer.
        launcher: starts simulation runs from a config (``pollen ui``); None where runs cannot be
            started (a coordinator's own dashboard).
    """
    require("fastapi", "ui", "the dashboard (pollen ui, --ui-port)")
    from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field

    app = FastAPI(title=TITLE, version="1", openapi_url=None, docs_url=None, redoc_url=None,
                  description="Watch and steer Pollen runs. Send `Authorization: Bearer <token>` with every call; "
                              "the read-only token may call every GET, the control token every call.")

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/api"):
            header = request.headers.get("authorization", "")
            token = header[7:].strip() if header[:7].lower() == "bearer " else None
            who = tokens.who(token)
            if who is None:
                return JSONResponse({"detail": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            request.state.who = who
        return await call_next(request)

    def controller(request: Request) -> str:
        name, role = request.state.who
        if role != CONTROL:
            raise HTTPException(403, "this token may only read; steering needs the control token")
        host = request.client.host if request.client else "?"
        return f"{name}@{host}"

    def control_of(run: str) -> Any:
        index.folder(run)  # 404 for an unknown run
        control = index.controls.get(run)
        if control is None:
            raise HTTPException(409, f"run {run!r} is not steered by this process (only live runs started here or "
                                     "served with --ui-port can be controlled)")
        return control

    @app.exception_handler(RunError)
    async def not_found(request: Request, exc: RunError) -> Any:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ConfigError)
    async def invalid(request: Request, exc: ConfigError) -> Any:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    # -------------------------------------------------------- reading (read token)
    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi() -> Any:
        return app.openapi()

    @app.get("/api/whoami", summary="The caller's token name and role")
    def whoami(request: Request) -> dict[str, Any]:
        name, role = request.state.who
        return {"name": name, "role": role, "can_start": launcher is not None}

    @app.get("/api/runs", summary="Every run: status, dataset, strategy, protections, best metric, duration")
    def runs() -> list[dict[str, Any]]:
        return [index.row(n) for n in index.names()]

    @app.get("/api/runs/{run}", summary="One run's summary, control state and commands so far")
    def run(run: str) -> dict[str, Any]:
        row = index.row(run)
        control = index.controls.get(run)
        live = index.live.get(run)
        return {**row, "control": control.status() if control is not None else None,
                "live": live.summary() if live is not None else None, "commands": index.control_log(run)}

    @app.get("/api/runs/{run}/rounds", summary="Per-round records after round `after` (the curves' data)")
    def rounds(run: str, after: int = Query(0, ge=0)) -> list[dict[str, Any]]:
        return index.history(run, after)

    @app.get("/api/runs/{run}/config", summary="The run's resolved configuration")
    def config(run: str) -> dict[str, Any]:
        return index.config(run)

    @app.get("/api/runs/{run}/parties", summary="Parties: state, last seen, rounds, metrics, ε, bytes")
    def parties(run: str, limit: int = Query(1000, ge=1, le=MAX_PARTIES)) -> list[dict[str, Any]]:
        return index.parties(run, limit)

    @app.get("/api/runs/{run}/models", summary="Model versions: the kept checkpoint and the final model")
    def models(run: str) -> list[dict[str, Any]]:
        return index.models(run)

    @app.get("/api/runs/{run}/models/{which}", summary="Download a model version (safetensors)")
    def model_file(run: str, which: str) -> Any:
        path = index.model_path(run, which)
        return FileResponse(path, media_type="application/octet-stream", filename=f"{run}-{which}.safetensors")

    @app.get("/api/compare", summary="Several runs' summaries and curves side by side")
    def compare(runs: str = Query(..., description="comma-separated run names")) -> dict[str, Any]:
        names = [n for n in runs.split(",") if n][:12]
        return {"runs": [index.row(n) for n in names], "rounds": {n: index.history(n) for n in names}}

    # -------------------------------------------------------- steering (control token)
    class Settings(BaseModel):
        """New settings for the next rounds; each within the range the command line allows."""

        model_config = ConfigDict(extra="forbid")
        lr: float | None = Field(None, description="local learning rate (> 0, ≤ 100); fixed from the next round on")
        epochs: int | None = Field(None, description="local epochs per round (1 … 1000)")
        parties_per_round: int | None = Field(None, description="parties sampled each round (1 … parties)")
        round_timeout: float | None = Field(None, description="seconds to wait for replies (> 0)")

    class StartRun(BaseModel):
        """A simulation to start: a config as TOML text or as a nested object (like a TOML file)."""

        model_config = ConfigDict(extra="forbid")
        toml: str | None = Field(None, description="the config file's text")
        config: dict[str, Any] | None = Field(None, description="the config as nested sections")

    def command(run: str, kind: str, by: str, **args: Any) -> dict[str, Any]:
        cmd = control_of(run).submit(kind, by, **args)
        return {"accepted": cmd.kind, "args": cmd.args, "by": cmd.by, "status": control_of(run).status()}

    @app.post("/api/runs/{run}/pause", summary="Pause after the current round")
    def pause(run: str, by: str = Depends(controller)) -> dict[str, Any]:
        return command(run, "pause", by)

    @app.post("/api/runs/{run}/resume", summary="Resume a paused run")
    def resume(run: str, by: str = Depends(controller)) -> dict[str, Any]:
        return command(run, "resume", by)

    @app.post("/api/runs/{run}/stop", summary="Stop after the current round (its checkpoint is written first)")
    def stop(run: str, by: str = Depends(controller)) -> dict[str, Any]:
        return command(run, "stop", by)

    @app.post("/api/runs/{run}/settings", summary="Change the next round's settings (validated like the CLI)")
    def settings(run: str, body: Settings, by: str = Depends(controller)) -> dict[str, Any]:
        values = body.model_dump(exclude_none=True)
        return command(run, "reconfigure", by, **values)

    @app.post("/api/runs/{run}/parties/{party}/remove", summary="Leave a party out of the next rounds")
    def remove(run: str, party: str, by: str = Depends(controller)) -> dict[str, Any]:
        return command(run, "remove", by, party=party)

    @app.post("/api/runs/{run}/parties/{party}/readmit", summary="Let a removed party take part again")
    def readmit(run: str, party: str, by: str = Depends(controller)) -> dict[str, Any]:
        return command(run, "readmit", by, party=party)

    @app.post("/api/runs", summary="Start a simulation from a config (pollen ui only)", status_code=202)
    def start(body: StartRun = Body(...), by: str = Depends(controller)) -> dict[str, Any]:
        if launcher is None:
            raise HTTPException(409, "this dashboard serves a running federation; start runs with 'pollen ui'")
        if (body.toml is None) == (body.config is None):
            raise ConfigError("give the config either as 'toml' (the file's text) or as 'config' (nested sections)")
        return launcher.start(body.toml if body.toml is not None else body.config, by)

    @app.exception_handler(PollenError)
    async def failed(request: Request, exc: PollenError) -> Any:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    # -------------------------------------------------------- the page
    static = static_dir()
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> Any:
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"ok": True, "time": time.time()}

    return app


def openapi_document(app: Any) -> str:
    """The OpenAPI document as JSON text (docs, tests)."""
    return json.dumps(app.openapi(), indent=2)
