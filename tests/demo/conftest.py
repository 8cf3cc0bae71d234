import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

START_TIMEOUT = 180  # seconds: imports, then the three default models load on the first page view


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """`vitlm demo` served on 127.0.0.1 from a subprocess, offline (no Hub, no analytics), for the whole session:
    its URL and the file its output goes to."""
    home = tmp_path_factory.mktemp("demo-home")
    port = free_port()
    env = {
        **os.environ,
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_TEMP_DIR": str(home / "gradio"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",  # the log is read while the server runs
    }
    log = open(home / "demo.log", "w+")  # noqa: SIM115  (closed at teardown)
    command = [sys.executable, "-m", "vitlm.cli", "demo", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"`vitlm demo` exited with status {process.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"`vitlm demo` did not answer on {url} within {START_TIMEOUT} s:\n{log.read()}")
            time.sleep(0.5)
        yield url, home / "demo.log"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def demo_url(demo_server):
    return demo_server[0]


@pytest.fixture
def client_downloads(tmp_path, monkeypatch):
    """A folder for `gradio_client.Client(download_files=...)`. The client stages each download in a new folder of
    the temporary directory and leaves that folder behind, empty: the staging goes here too."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path
