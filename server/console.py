"""``/console``: the operator's console, served by the API itself.

One server-rendered page and a little JavaScript (no build step, nothing fetched from
elsewhere): Plotly's bundled script is served from the installed ``plotly`` package.
The page calls the public API (``/v1/stats``, ``/v1/models``, ``/v1/batches``,
``/v1/models/<m>/infer``, and ``/v1/models/<m>/generate`` streamed for a model that
writes text), with the API key the operator types in when keys are on,
so it shows exactly what that key may see.
"""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path

from flask import Blueprint, Response, jsonify, request, send_file

from server.errors import invalid, not_found
from server.services import services

bp = Blueprint("console", __name__, url_prefix="/console")
ASSETS = resources.files("server").joinpath("console_assets")


def _asset(name: str, mimetype: str) -> Response:
    response = Response(ASSETS.joinpath(name).read_text(), mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("")
@bp.get("/")
def page():
    return _asset("console.html", "text/html")


@bp.get("/console.js")
def script():
    return _asset("console.js", "text/javascript")


@bp.get("/plotly.min.js")
def plotly_js():
    import plotly

    bundled = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return send_file(bundled, mimetype="text/javascript", max_age=86_400)


@bp.get("/sample")
def sample():
    """A generated question for the playground: picture, question (and sound), answer."""
    from fusionserve.zoo import data  # numpy and Pillow only: no torch on a serving host

    name = request.args.get("model", "")
    model = services().registry.get(name)
    if model is None:
        raise not_found("model_not_found", f"no model named {name!r} is served")
    try:
        seed = int(request.args.get("seed", "0"))
    except ValueError:
        raise invalid("seed must be an integer") from None
    modalities = model.meta.config.modalities or ["text", "image"]
    [one] = data.generate(1, abs(seed), modalities)
    body = {
        "question": one.question,
        "answer": one.answer,
        "image": base64.b64encode(data.png_bytes(one.image)).decode(),
    }
    if one.audio is not None:
        body["audio"] = base64.b64encode(data.wav_bytes(one.audio)).decode()
    return jsonify(body)
