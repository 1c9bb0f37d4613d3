"""The kernel boundary reports the kernel's own words: verifier lines on rejection."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from xdplb._bpf.libbpf import BpfObject, VerifierError

pytestmark = pytest.mark.bpf

BAD = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp")
int bad(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	return data[100]; /* no bounds check: the verifier must refuse */
}
char _license[] SEC("license") = "GPL";
"""


def test_a_verifier_rejection_carries_the_relevant_log_lines(tmp_path, bpf_object_path):
    clang = shutil.which("clang-19") or shutil.which("clang")
    if not clang:
        pytest.skip("clang not installed")
    arch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True,
                          check=True).stdout
    src = tmp_path / "bad.bpf.c"
    src.write_text(BAD)
    obj = tmp_path / "bad.bpf.o"
    subprocess.run([clang, "-O2", "-g", "--target=bpf", f"-I/usr/include/{arch.strip()}",
                    "-c", str(src), "-o", str(obj)], check=True)
    with pytest.raises(VerifierError) as err:
        BpfObject(obj).load(("bad",))
    text = str(err.value)
    assert "invalid access to packet" in text, text
    assert "\n" not in text  # one line
