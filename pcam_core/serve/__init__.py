"""`pcam serve`: an HTTP API over a trained run (FastAPI on uvicorn; see docs/serve.md).

A face, as thin as a CLI command: each route parses, calls the engine the dashboard calls, and formats
JSON. Uploaded patches are checked by `uploads.read_uploads` (the Predict page's rules and messages) and
scored by `api.Predictor.predict` at the run's own threshold unless the request names one; whole slides
are analysed by `pcam slide` in a background job process (`runs.jobs.start_job`), so the server keeps
answering while a slide is scored, and a finished analysis's GeoJSON, report and heat map are served.

- `app`: `create_app` and its routes; `schema`: the request and answer models the OpenAPI schema is
  written from; `errors`: every error as JSON `{"error": message}` (4xx for what the client can fix, never
  a traceback); `batcher`: patches from requests that arrive together scored in one forward pass.

Importing this package does not load torch: `create_app` sets OpenMP's wait policy first.
"""

from .app import FILES_FIELD, OUTPUTS, TOKEN_ENV, Limits, check_slide, create_app, prefer_passive_openmp, resolve_slide, serve
from .batcher import MicroBatcher
from .errors import ApiError

__all__ = ["FILES_FIELD", "OUTPUTS", "TOKEN_ENV", "ApiError", "Limits", "MicroBatcher", "check_slide", "create_app",
           "prefer_passive_openmp", "resolve_slide", "serve"]
