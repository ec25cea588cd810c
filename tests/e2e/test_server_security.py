"""The dashboard server as started by `streamlit run streamlit_app.py`: loopback only, XSRF on, static
file serving limited to static/."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]


def _other_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [a for a in out if "." in a and not a.startswith("127.")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The dashboard as `./dashboard.sh` starts it, waited for until it answers (helpers.Dashboard)."""
    from helpers import Dashboard

    logs = tmp_path_factory.mktemp("logs")
    with Dashboard(tmp_path_factory.mktemp("ws"), logs / "streamlit.log", env={"PCAM_DEMO_PATCHES": "64"}) as app:
        yield app.port, app.url


def test_listens_on_loopback_only(server):
    port, url = server
    assert requests.get(f"{url}/_stcore/health", timeout=5).text == "ok"
    for address in _other_addresses():
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, port)) != 0, f"reachable on {address}"


def test_uploads_without_the_xsrf_token_are_refused(server):
    _, url = server
    r = requests.put(f"{url}/_stcore/upload_file/session/file", files={"file": ("x.tif", b"abc")}, timeout=5)
    assert r.status_code in (400, 403)  # no session cookie, no XSRF token: nothing is accepted


def test_static_serving_serves_the_chart_library_and_nothing_else(server):
    """`server.enableStaticServing` is on for the plotly.js bundle in static/; the app's code, its config
    and the workspace stay out of reach, however the path is spelt."""
    _, url = server
    bundle = requests.get(f"{url}/app/static/plotly-pcam.min.js", timeout=10)
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"]
    assert bundle.headers["x-content-type-options"] == "nosniff"
    config_text = (REPO / ".streamlit" / "config.toml").read_text()
    secrets = {"streamlit_app.py": (REPO / "streamlit_app.py").read_text()[:200], ".streamlit/config.toml": config_text[:200],
               "pcam_core/cli/__init__.py": (REPO / "pcam_core" / "cli" / "__init__.py").read_text()[:200]}
    for target, content in secrets.items():
        depth = target.count("/")
        for path in (f"../{target}", f"..%2F{target.replace('/', '%2F')}", f"%2e%2e/{target}", f"..%5c{target}",
                     f"{'../' * (depth + 2)}{target}"):
            r = requests.get(f"{url}/app/static/{path}", timeout=10, allow_redirects=True)
            assert content not in r.text, f"/app/static/{path} served {target}"
    assert requests.get(f"{url}/app/static/missing.js", timeout=10).status_code == 404


def test_config_sets_the_upload_limit_and_protections():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "127.0.0.1" and server["enableXsrfProtection"] is True
    assert 0 < server["maxUploadSize"] <= 50
    assert server["fileWatcherType"] == "none"
    assert config["client"]["showErrorDetails"] == "none"  # no traceback reaches a user's browser


def test_no_shell_with_user_text():
    """No code path of the product hands a string to a shell."""
    for folder in ("pcam_core", "pages", "pcam_app", "app_pages"):
        for path in (REPO / folder).glob("**/*.py") if (REPO / folder).exists() else []:
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    name = ast.unparse(node.func)
                    assert name not in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"), (path, name)
                    for kw in node.keywords:
                        assert not (kw.arg == "shell" and ast.unparse(kw.value) != "False"), (path, node.lineno)


def test_the_server_loads_the_heavy_libraries_before_the_first_visitor(tmp_path):
    """`streamlit run streamlit_app.py` imports the file as a module to find its `st.App`: torch, the app,
    scikit-learn and the grad-cam package are in the server's memory as soon as it answers, before any
    page is requested (the first visitor does not wait 4-6 s for them)."""
    from helpers import Dashboard

    with Dashboard(tmp_path / "workspace", tmp_path / "streamlit.log", env={"PCAM_DEMO_PATCHES": "64"}) as app:
        mapped = Path(f"/proc/{app.proc.pid}/maps").read_text()
        log = app.log_path.read_text()
    assert "libtorch_cpu" in mapped and "/sklearn/" in mapped and "/cv2/" in mapped  # cv2: the grad-cam package's
    assert "Error" not in log and "Traceback" not in log and "No runtime found" not in log  # a quiet start


def test_the_start_up_import_leaves_the_collector_little_to_walk():
    """Streamlit collects garbage in full after every script run. The import `streamlit run` does at start
    freezes what it loaded (torch, the app, scikit-learn, grad-cam: hundreds of thousands of objects that
    live as long as the server), so that each of those collections walks only what sessions made since."""
    probe = ("import gc, streamlit_app; gc.collect(2); "
             "print(gc.get_freeze_count(), len(gc.get_objects()))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    frozen, tracked = map(int, out.stdout.split()[-2:])
    assert frozen > 200_000 and tracked < frozen / 20, (frozen, tracked)
