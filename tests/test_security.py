"""Security defaults: pickles only through the restricted unpickler, no remote code, token auth on,
dashboard on loopback."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import reliability
from arxivcls.errors import UserError
from arxivcls.models import load_classifier, resolve_model

PACKAGE = Path(__file__).resolve().parents[1] / "arxivcls"


def test_pickled_weights_that_are_not_a_state_dict_are_refused(tiny_bert, tmp_path):
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    (unsafe / "config.json").write_text((tiny_bert / "config.json").read_text())
    (unsafe / "pytorch_model.bin").write_bytes(b"pickle payload would run code on load")
    with pytest.raises(UserError, match="refused to load .*not a plain tensor state dict"):
        load_classifier(str(unsafe))
    reliability.record("security", "model directory whose pytorch_model.bin is not a plain tensor state dict",
                       "refused: pickled weights load only through torch.load(weights_only=True), then as a safetensors copy")


def test_no_remote_code_anywhere_in_the_package():
    sources = "\n".join(p.read_text() for p in PACKAGE.glob("*.py"))
    assert "trust_remote_code=True" not in sources
    assert len(re.findall(r"trust_remote_code=False", sources)) >= 3  # every from_pretrained says so


def test_model_directory_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.slow
def test_local_cluster_keeps_token_auth_and_loopback_dashboard():
    script = textwrap.dedent("""
        import json, os, urllib.request, urllib.error
        os.environ.pop("RAY_ADDRESS", None)
        import ray
        from arxivcls.raycluster import connect_ray
        connect_ray(log=lambda *_: None)
        from ray._private.worker import _global_node
        url = _global_node.webui_url
        try:
            urllib.request.urlopen(f"http://{url}/api/jobs/", timeout=30)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        print("RESULT", json.dumps({"url": url, "status": status}))
        ray.shutdown()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, result.stdout[-2000:] + result.stderr[-3000:]
    import json

    info = json.loads(line[0].split(" ", 1)[1])
    assert info["url"].startswith("127.0.0.1:")  # dashboard bound to loopback
    assert info["status"] == 401  # no token, no access
    reliability.record("security", "local `ray.init()` started by arxivcls",
                       f"dashboard on {info['url'].split(':')[0]}; a request without the token gets HTTP {info['status']}")
