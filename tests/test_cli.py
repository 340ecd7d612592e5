"""The `edgefl` command line, run as a user would."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from edgefl import __version__
from edgefl.bench.harness import Report, Row, Samples, percentile, ratio_row
from edgefl.transport.mosquitto import BrokerSettings, LocalMosquitto, render
from tests.conftest import need_mosquitto


def edgefl(*args, timeout=300, **env):
    return subprocess.run([sys.executable, "-m", "edgefl", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def test_version_and_help():
    out = edgefl("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"edgefl {__version__}"
    out = edgefl("--help")
    for cmd in ("keygen", "broker", "run", "ping", "demo", "bench"):
        assert cmd in out.stdout


def test_config_errors_are_one_clear_line():
    out = edgefl("--set", "mqtt.port=0", "run")
    assert out.returncode == 2
    assert out.stderr.strip() == "edgefl: configuration error: mqtt.port: 0 is outside [1, 65535] (from --set)"
    out = edgefl("--set", "node.role=device", "run")
    assert out.returncode == 2
    assert out.stderr.strip() == "edgefl: configuration error: node.fog: a device needs the id of the fog it reports to"
    out = edgefl("--set", "node.role=cloud", "--set", "fl.hidden=[600, 100, 30, 20]", "run")
    assert out.returncode == 2 and out.stderr.startswith("edgefl: configuration error: fl.hidden: a "
                                                         "3920-600-100-30-20-10 model's training state takes 27.7 MiB")
    out = edgefl("--set", "node.role=cloud", "--set", "fl.hidden=[16]", "run")
    assert out.returncode == 2 and out.stderr.startswith("edgefl: configuration error: fl.warm_start: a warm start "
                                                         "needs every hidden layer at least 20 wide (fl.hidden = [16])")
    out = edgefl("--set", "node.role=cloud", "--set", "fl.hidden=[16]", "--set", "fl.warm_start=false",
                 "--set", "ledger.chain=x", "run")
    assert "fl.warm_start" not in out.stderr


def test_keygen(tmp_path):
    out = edgefl("keygen", "--id", "dev-1", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "dev-1.key").stat().st_mode & 0o777 == 0o600
    assert out.stdout.split()[1] == (tmp_path / "dev-1.pub").read_text().strip()
    again = edgefl("keygen", "--id", "dev-1", "--out", str(tmp_path))
    assert again.returncode == 1 and "exists" in again.stderr
    assert edgefl("keygen", "--id", "bad/id", "--out", str(tmp_path)).returncode == 1


@pytest.mark.parametrize("args", [
    ["--role", "fog"],
    ["--role", "fog", "--reader", "fog-1", "--cloud-host", "cloud.example", "--fog-id", "fog-1", "--site", "s1"],
    ["--role", "cloud", "--tls"],
    ["--role", "fog", "--anonymous"],
])
def test_broker_config_renders_files_mosquitto_accepts(tmp_path, args):
    need_mosquitto()
    out = edgefl("broker", "config", *args, "--out", str(tmp_path), "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "mosquitto.conf").read_text()
    assert "set_tcp_nodelay true" in conf and "max_packet_size 1048576" in conf
    if "--anonymous" not in args:
        acl = (tmp_path / "acl").read_text()
        site = args[args.index("--site") + 1] if "--site" in args else "site-1"
        clients = f"{site}/device" if "fog" in args else "+/fog"  # a fog's devices, a cloud's fog bridges
        assert f"pattern write edgefl/v1/{clients}/%u/#" in acl
        assert "pattern read edgefl/v1/+/fog/#" not in acl  # not the fog's responses to other devices
    if "--cloud-host" in args:
        assert "topic edgefl/v1/s1/fog/fog-1/# out 1" in conf and "user fog-1" in (tmp_path / "acl").read_text()
    if "--tls" in args:
        assert "require_certificate true" in conf and "use_identity_as_username true" in conf
    if "--anonymous" in args:
        assert "listener 1883 127.0.0.1" in conf


def test_rendered_bridge_config_runs_in_mosquitto(tmp_path):
    """Mosquitto accepts the fog template with a bridge (the cloud need not be up)."""
    need_mosquitto()
    files = render(BrokerSettings(port=0, bind="127.0.0.1", data_dir=str(tmp_path), auth="none",
                                  run_user=os.environ.get("USER", "root"), log_dest="stderr",
                                  cloud_host="127.0.0.1", cloud_port=1, fog_id="fog-1", site="s1"))
    from edgefl.transport.mosquitto import free_port, mosquitto_binary
    port = free_port()
    conf = files["mosquitto.conf"].replace("listener 0 ", f"listener {port} ")
    (tmp_path / "m.conf").write_text(conf)
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(tmp_path / "m.conf")], stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        proc.terminate()
        proc.wait()


def test_run_and_ping_between_processes(tmp_path):
    need_mosquitto()
    with LocalMosquitto(tmp_path / "broker") as broker:
        common = ["--set", "node.site=s", "--set", f"mqtt.port={broker.port}"]
        for node in ("fog-1", "dev-1", "cloud-1"):
            d = tmp_path / node
            assert edgefl("--set", f"node.data_dir={d}", "keygen", "--id", node).returncode == 0
        for node in ("fog-1", "dev-1"):  # each trusts both; the fog knows the cloud, whose main chain is its parent
            for peer in ("fog-1", "dev-1", "cloud-1"):
                (tmp_path / node / "trust").mkdir(exist_ok=True)
                (tmp_path / node / "trust" / f"{peer}.pub").write_text((tmp_path / peer / "keys" / f"{peer}.pub").read_text())
        fog_args = [*common, "--set", "node.id=fog-1", "--set", "node.role=fog", "--set",
                    f"node.data_dir={tmp_path / 'fog-1'}"]
        out = edgefl(*fog_args, "run", "--for", "1")  # a fog runs its sub-chain: it must exist
        assert out.returncode == 1 and "no genesis block (create the chain with `edgefl ledger init`)" in out.stderr
        assert edgefl(*fog_args, "ledger", "init").returncode == 0
        fog = subprocess.Popen([sys.executable, "-m", "edgefl", *fog_args, "run"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 30
            while True:
                out = edgefl(*common, "--set", "node.id=dev-1", "--set", f"node.data_dir={tmp_path / 'dev-1'}",
                             "ping", "fog-1", "--count", "5", "--timeout", "3")
                if out.returncode == 0 or time.time() > deadline:
                    break
            assert out.returncode == 0, out.stderr
            assert "5 signed round trips to fog-1" in out.stdout and "median" in out.stdout
        finally:
            fog.terminate()  # SIGTERM: graceful
            stdout, stderr = fog.communicate(timeout=30)
        assert fog.returncode == 0, stderr
        assert "stopped: SIGTERM" in stdout


def test_demo_runs_end_to_end():
    need_mosquitto()
    out = edgefl("demo", timeout=180)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "[3] task 'digits' on the main chain: 2 rounds at ε=10 per feature per round" in text
    for fog, devices in (("a", ("dev-a1", "dev-a2", "dev-a3")), ("b", ("dev-b1", "dev-b2", "dev-b3"))):
        assert text.count(f"30 training steps recorded ({', '.join(d + ' 10' for d in devices)})") == 2
        assert (f"fog-{fog}'s sub-chain: a PBFT committee of {', '.join(devices)}, fog-{fog} (quorum 3 of 4, "
                "tolerates 1 byzantine)") in text
    assert "signed by 3 of 4 members of fog-a's committee" in text or "signed by 4 of 4" in text
    assert text.count("≠") == 0 and text.count("= main's") == 4  # every interlock shown holds
    final = re.search(r"\[5\] round 1 done .* test accuracy ([\d.]+) %", text)
    assert final and float(final.group(1)) > 80, text  # chance is 10 %; about 95 % with the warm start
    assert "verdict: ACCEPT" in text and "T replayed: ok" in text
    assert re.search(r"\[8\] fog-b recomputes fog-a's warm start \(record \w+… ACCEPT through Protocol 1; the "
                     r"global model and 3 batches fetched over MQTT, digest-checked\): the same model", text), text
    assert "fog-a rejected it (envelope_rejected{reason=bad_signature}: 1)" in text
    assert "acknowledged as a duplicate, counted once (3 batches for round 1 at fog-a)" in text


def test_bench_transport_quick_writes_table_and_json(tmp_path):
    need_mosquitto()
    out = edgefl("--log-level", "ERROR", "bench", "transport", "--quick", "--json", str(tmp_path / "t.json"),
                 "--markdown", str(tmp_path / "t.md"), timeout=600)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "t.json").read_text())
    names = {r["name"] for r in rows}
    for size in ("64B", "16KiB", "256KiB"):
        for qos in (0, 1):
            assert f"transport_rtt_ratio_{size}_qos{qos}" in names
    assert {"transport_pipelined_qos1_raw", "transport_pipelined_qos1_signed", "transport_pipelined_ratio_qos1"} <= names
    for r in rows:
        assert {"name", "unit", "median", "p99", "cpu_median"} <= set(r) and r["median"] > 0
        if r["unit"] == "ratio":
            assert r["ratio"] == r["median"]
    assert "transport_rtt_ratio_64B_qos1" in out.stdout
    assert "| transport_rtt_raw_64B_qos1 |" in (tmp_path / "t.md").read_text()


def test_harness_statistics_and_output(tmp_path):
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile(list(range(1, 101)), 99) == 99
    s = Samples()
    for i in range(1, 101):
        s.add(i / 1000, i / 2000)
    a = s.row("a")
    assert a.median == pytest.approx(50.5) and a.p99 == pytest.approx(99) and a.cpu_pct == pytest.approx(50)
    b = Row("b", "ms", 25.25, 33.0, 10.0)
    r = ratio_row("a_vs_b", a, b, goal="<= 1.3")
    assert r.ratio == pytest.approx(2.0) and r.unit == "ratio"
    rep = Report("t")
    rep.add(a)
    rep.add(r)
    rep.write_json(tmp_path / "x.json")
    data = json.loads((tmp_path / "x.json").read_text())
    assert data[1]["ratio"] == pytest.approx(2.0) and "anchor" not in data[0]
    assert rep.table().splitlines()[1].split()[:4] == ["name", "unit", "median", "p99"]


def test_bench_ml_quick_writes_rows_grid_and_plots(tmp_path):
    out = edgefl("--log-level", "ERROR", "bench", "ml", "--quick", "--no-cold", "--json", str(tmp_path / "m.json"),
                 "--grid", str(tmp_path / "grid.json"), "--plots", str(tmp_path / "plots"), timeout=900)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads((tmp_path / "m.json").read_text())}
    full, bare = rows["extract_onnx_b64"], rows["extract_onnx_b64_bare"]
    assert full["ratio"] == pytest.approx(full["median"] / bare["median"])
    assert rows["extract_overhead_ratio"]["goal"] == "<= 1.5"
    assert 0 < rows["laplace_delta_eps1"]["median"] < rows["laplace_delta_eps10"]["median"] < 1e-6
    for r in ("accuracy_eps1_round2", "accuracy_epsinf_round2"):
        assert 10 < rows[r]["median"] <= 100  # generated digits: better than chance (10 %)
    assert rows["aggregate_fedavg_n10"]["ratio"] == 1.0 and rows["aggregate_bulyan_n10"]["median"] > 0
    runs = json.loads((tmp_path / "grid.json").read_text())
    assert {(r["method"], r["epsilon"], r["batch"]) for r in runs} == {("warm", 1.0, 64), ("warm", None, 64)}
    assert all(len(r["accuracy"]) == 2 for r in runs)
    for png in ("accuracy_vs_epsilon.png", "accuracy_vs_batch.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_round_quick_runs_the_networked_task_beside_the_simulation(tmp_path):
    need_mosquitto()
    out = edgefl("--log-level", "ERROR", "bench", "round", "--quick", "--epsilons", "10",
                 "--json", str(tmp_path / "r.json"), timeout=900)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    for r in (1, 2):
        net, sim = rows[f"round_accuracy_eps10_round{r}"], rows[f"round_sim_accuracy_eps10_round{r}"]
        assert net["ratio"] == pytest.approx(net["median"] / sim["median"])
        assert 50 < net["median"] <= 100 and 50 < sim["median"] <= 100  # generated digits at ε = 10; chance is 10
    assert rows["round_seconds_eps10"]["median"] > 0 and rows["round_seconds_eps10"]["ratio"] > 1
