"""The web UI (the files in engine/server/web/): index.html at /, the rest under /static, and its icon at
/favicon.ico (an SVG, which browsers take by its content type)."""
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).parent / "web"
# inline: the package ships only web/*.html, *.js and *.css
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" '
           'fill="#3b5bdb"/><path d="M8 8h16a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2h-9l-5 4v-4H8a2 2 0 0 1-2-2v-9a2 2 0 '
           '0 1 2-2z" fill="#fff"/></svg>')

router = APIRouter()


@router.get("/")
async def index():
    return FileResponse(WEB_DIR / "index.html")


@router.get("/favicon.ico")
async def favicon():
    return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


def mount_static(app: FastAPI) -> None:
    """Serve WEB_DIR under /static (a mount, which routers cannot carry)."""
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
