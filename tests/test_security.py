"""The security holes an attack on tokentrim found (issue 16): each test fails on the old behaviour."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
from images import good_png
from typer.testing import CliRunner

from tokentrim_cli import inputs
from tokentrim_cli.cli import app
from tokentrim_cli.errors import InputError, OutputError
from tokentrim_cli.files import atomic_path, write_text_atomic

runner = CliRunner()
ESC = "\x1b"


# ---- 1. a model directory never runs its own code -------------------------------------------------


def test_model_directory_code_never_runs_even_when_stdin_says_yes(tmp_path):
    model = tmp_path / "evil-model"
    model.mkdir()
    marker = tmp_path / "code-ran"
    (model / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
    }))  # fmt: skip
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    executable = shutil.which("tokentrim")
    result = subprocess.run(
        [executable, "chat", "-m", str(model), "-p", "hi"], input="y\n" * 20, capture_output=True, text=True,
        timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert not marker.exists()
    assert "Traceback" not in result.stderr and "[y/N]" not in result.stdout + result.stderr
    assert "asks to run Python code shipped with the checkpoint" in result.stderr


# ---- 2. atomic writes never replace special files ------------------------------------------------


def test_a_pipe_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()))
    reader.start()
    write_text_atomic(fifo, "profile = 1\n")
    reader.join(10)
    assert received == [b"profile = 1\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["pipe"]  # no temporary file next to it


def test_a_character_device_is_written_through_not_replaced(tmp_path):
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    except PermissionError:
        pytest.skip("creating a device node needs root")
    write_text_atomic(device, "x = 1\n")
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_a_symlink_to_a_regular_file_is_written_through(tmp_path):
    real = tmp_path / "real.toml"
    real.write_text("old")
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        write_text_atomic(tmp_path, "x")


def test_an_exception_mid_write_leaves_no_temporary(tmp_path):
    from tokentrim_cli.errors import Terminated

    with pytest.raises(Terminated):
        with atomic_path(tmp_path / "out.png") as tmp:
            open(tmp, "w").write("half")
            raise Terminated()
    assert os.listdir(tmp_path) == []


# ---- 3. escape sequences never reach the terminal ------------------------------------------------


def test_escapes_in_profile_fields_are_not_printed_raw(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "evil.toml").write_text(
        'schema_version = 1\nname = "evil\\u001b[2J\\u001b]0;pwned\\u0007"\nmethod = "none"\n'
        'description = "[calibration] \\u001b[31mred"\n'
    )
    listed = runner.invoke(app, ["profiles", "list", "--wide"])
    assert listed.exit_code == 0
    assert ESC not in listed.stdout + listed.stderr and "\\x1b[2J" in listed.stdout
    assert "[calibration]" in listed.stdout  # not eaten as Rich markup
    (tmp_path / "bad.toml").write_text('schema_version = 1\nname = "x"\nmethod = "none"\n"\\u001b[2Jkey" = 1\n')
    validated = runner.invoke(app, ["profiles", "validate", str(tmp_path / "bad.toml")])
    assert validated.exit_code == 3 and ESC not in validated.stderr and "\\x1b[2J" in validated.stderr


class _Server:
    """A local HTTP server whose handler is given per test."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(respond):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            respond(self)

        def log_message(self, *args):
            pass

    return Handler


def test_a_server_reason_phrase_is_escaped(tmp_path):
    def respond(h):
        h.send_response(404, "Not\x1b]0;pwned\x07 Found\x1b[2J")
        h.end_headers()

    server = _Server(_handler(respond))
    try:
        result = runner.invoke(app, ["chat", "-m", "random:tiny", "-i", f"{server.url}/x.png", "-p", "hi"])
    finally:
        server.close()
    assert result.exit_code == 3
    assert "cannot download (HTTP 404" in result.stderr and ESC not in result.stderr and "\x07" not in result.stderr


def test_one_shot_chat_filters_control_characters_from_the_model(monkeypatch, tmp_path):
    from tokentrim_cli import generation

    real = generation.generate

    def noisy(*args, on_text=None, **kwargs):
        result = real(*args, on_text=None, **kwargs)
        on_text("safe\x1b[2J\x1b]0;title\x07text")
        return result

    monkeypatch.setattr(generation, "generate", noisy)
    result = runner.invoke(app, ["chat", "-m", "random:tiny", "-p", "hi", "-n", "2", "-q"])
    assert result.exit_code == 0, result.stderr
    assert ESC not in result.stdout and "\x07" not in result.stdout and "safe" in result.stdout


# ---- 4. downloads stay on HTTP and end on time -----------------------------------------------------


def test_a_redirect_to_ftp_is_refused():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]

    def respond(h):
        h.send_response(302)
        h.send_header("Location", f"ftp://127.0.0.1:{port}/x.png")
        h.end_headers()

    server = _Server(_handler(respond))
    try:
        with pytest.raises(InputError, match="refused a redirect to a ftp:// URL"):
            inputs.load_image(f"{server.url}/x.png")
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody connected to the FTP port
    finally:
        server.close()
        listener.close()


def test_a_trickling_download_ends_at_the_deadline(monkeypatch):
    monkeypatch.setattr(inputs, "DOWNLOAD_DEADLINE_S", 1.5)

    def respond(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(100):
            try:
                h.wfile.write(b"x")
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.3)

    server = _Server(_handler(respond))
    started = time.monotonic()
    try:
        with pytest.raises(InputError, match="cannot download"):
            inputs.load_image(f"{server.url}/slow.png")
    finally:
        server.close()
    assert time.monotonic() - started < 5


def test_a_server_that_does_not_speak_http_is_an_input_error():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve():
        connection, _ = listener.accept()
        connection.recv(1024)
        connection.sendall(b"SSH-2.0-OpenSSH_9.0\r\n")
        connection.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(InputError, match="does not speak HTTP"):
            inputs.load_image(f"http://127.0.0.1:{port}/x.png")
    finally:
        listener.close()


def test_url_schemes(tmp_path):
    picture = good_png(tmp_path / "a.png")
    assert inputs.load_image(f"file://{picture}").size == (40, 30)
    assert inputs.is_url("HTTP://example.com/x.png") and inputs.is_url("https://x")
    with pytest.raises(Exception, match="unsupported URL scheme 'ftp'"):
        inputs.load_image("ftp://example.com/x.png")
    result = runner.invoke(app, ["chat", "-m", "random:tiny", "-i", "ftp://example.com/x.png", "-p", "hi"])
    assert result.exit_code == 2 and "unsupported URL scheme 'ftp'" in result.stderr


def test_help_does_not_import_torch():
    code = "import sys; from tokentrim_cli.cli import app; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
