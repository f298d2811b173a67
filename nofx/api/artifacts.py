"""``/artifacts/{id}/content``: an artifact's bytes with its content type."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from nofx import adapters
from nofx.services import runs as service

blp = Blueprint("artifacts", __name__, url_prefix="/artifacts", description="Artifact bytes")


@blp.route("/<string:artifact_id>/content")
class ArtifactContent(MethodView):
    @blp.response(200, description="the artifact's bytes",
                  content_type="application/octet-stream")
    def get(self, artifact_id: str) -> Response:
        """The artifact's bytes, with its content type and checksum."""
        artifact = service.get_artifact(artifact_id)
        data = adapters.storage().get(artifact["storage_key"])
        response = Response(data, mimetype=artifact["content_type"])
        response.headers.set("Content-Disposition", "inline",
                             **filename_params(artifact["name"]))
        # An artifact is whatever a model wrote (an .html, an .svg): a browser shows it as
        # its type says, never sniffs another, and runs no script of it on this origin.
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "sandbox"
        response.set_etag(artifact["sha256"])
        # An artifact never changes: a client that has it (If-None-Match) gets a 304.
        response.make_conditional(request)  # (sets the status and body in place)
        return response


def filename_params(name: str) -> dict[str, str]:
    """``Content-Disposition`` parameters naming the file ``name``, as Flask's ``send_file``
    writes them: quoted, with an ASCII ``filename`` and, for any other name, the exact one
    as RFC 5987 ``filename*`` (a plugin tool's artifact may be named anything; no header
    may carry a control character)."""
    name = "".join(c if c.isprintable() else "_" for c in name) or "artifact"
    try:
        name.encode("ascii")
        return {"filename": name}
    except UnicodeEncodeError:
        plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
        return {"filename": plain or "artifact",
                "filename*": f"UTF-8''{quote(name, safe='!#$&+^`|')}"}
