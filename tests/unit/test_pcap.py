"""Every case of the packet-case table can be written as a pcap that reads back exactly."""
from __future__ import annotations

from scapy.utils import rdpcap

from xdplb.frames import read_pcap, write_pcap
from xdplb.testing.__main__ import main
from xdplb.testing.cases import Evict, table


def test_each_case_is_a_pcap_of_its_steps_in_and_out(tmp_path, capsys):
    assert main(["--pcap", str(tmp_path)]) == 0
    files = sorted(tmp_path.glob("*.pcap"))
    assert len(files) == len(table())
    for f, case in zip(files, table(), strict=True):
        want = [x for s in case.rendered if not isinstance(s, Evict)
                for x in (s.input, s.output)]
        assert read_pcap(f) == want, case.name
    # and a reader that is not ours agrees (scapy's pcap reader)
    assert [bytes(p) for p in rdpcap(str(files[0]))] == read_pcap(files[0])


def test_a_pattern_picks_cases_and_an_unknown_one_is_an_error(tmp_path, capsys):
    assert main(["--list", "fragment"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed and all("ragment" in line for line in listed)
    assert main(["--pcap", str(tmp_path), "no such case anywhere"]) == 2
    assert "no case name contains" in capsys.readouterr().err


def test_timestamps_step_and_frames_round_trip(tmp_path):
    frames = [b"\x01" * 60, b"\x02" * 1514]
    write_pcap(tmp_path / "x.pcap", frames, t0=10.5, step=0.25)
    assert read_pcap(tmp_path / "x.pcap") == frames
    assert [float(p.time) for p in rdpcap(str(tmp_path / "x.pcap"))] == [10.5, 10.75]
