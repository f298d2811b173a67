"""``/artifacts/{id}/content``: an artifact's bytes with its content type."""

from __future__ import annotations

from flask import Response
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
        response.headers["Content-Disposition"] = f'inline; filename="{artifact["name"]}"'
        response.headers["ETag"] = f'"{artifact["sha256"]}"'
        return response
