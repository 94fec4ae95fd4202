"""The web UI (the files in engine/server/web/): index.html at / and the rest under /static."""
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).parent / "web"

router = APIRouter()


@router.get("/")
async def index():
    return FileResponse(WEB_DIR / "index.html")


def mount_static(app: FastAPI) -> None:
    """Serve WEB_DIR under /static (a mount, which routers cannot carry)."""
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
