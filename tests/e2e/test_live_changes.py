"""Live changes under load: while downloads run, a backend is added, another drained,
another removed; the downloads finish byte-identical and new connections follow the
new table (4 backends, 3 clients, `xdplb serve` driven through its control socket)."""
from __future__ import annotations

import collections
import hashlib
import subprocess

import pytest
from clients import paced_download
from test_serve import BIG, Backends, serving, write_config

pytestmark = pytest.mark.e2e


def serving_backend(lab) -> list[str]:
    """Backends with an established connection on port 8000."""
    out = []
    for h in lab.backend_hosts:
        r = lab.run(h.role, ["ss", "-Htn", "state", "established", "( sport = :8000 )"])
        if r.stdout.strip():
            out.append(h.role)
    return out


@pytest.mark.lab(backends=4, clients=3)
def test_add_drain_remove_during_downloads(lab, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    be = Backends(lab, tmp_path)
    hosts = {h.role: h for h in lab.backend_hosts}
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3", "h4"])
    want = (BIG, hashlib.sha256(be.big).hexdigest())
    with serving(lab, config, run_dir) as lb:
        download = lab.popen("client", paced_download(),
                             stdout=subprocess.PIPE, text=True)
        assert download.stdout.readline().strip() == "HTTP/1.0 200 OK"
        busy = serving_backend(lab)
        assert len(busy) == 1, busy
        drained = busy[0]
        removed = next(r for r in ("h2", "h3", "h4") if r != drained)
        lb.ctl("backend", "drain", hosts[drained].ipv4, "--vip", "web")
        lb.ctl("backend", "remove", hosts[removed].ipv4, "--vip", "web")
        lb.ctl("backend", "add", hosts["h5"].ipv4, "--vip", "web", "--mac", hosts["h5"].mac)
        assert download.poll() is None, "the download spans the changes"
        served = collections.Counter()
        for c in lab.client_hosts:
            for _ in range(15):
                r = lab.run(c.role, ["curl", "-s", "-m", "5", "http://10.0.0.10:8000/whoami"])
                served[r.stdout or f"FAIL{r.returncode}"] += 1
        size, digest = download.communicate(timeout=60)[0].split()
    assert (int(size), digest) == want, "download intact across add/drain/remove"
    expect = {"h2", "h3", "h4", "h5"} - {drained, removed}
    assert set(served) == expect and sum(served.values()) == 45, (served, drained, removed)
    assert {r: lab.tcp_csum_errors(r) for r in lab.hosts} == {r: 0 for r in lab.hosts}
