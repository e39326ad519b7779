# Two entry points on a fresh Debian/Ubuntu machine with Python 3.11+: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast system-deps bench clean

$(STAMP): pyproject.toml setup.py runtime/fast.pyx traces/_fast.pyx traces/_parse.pxi verify/_fast.pyx
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job on bundled defaults: a proof table per model (every strategy), clocks included, and a
# named property's counterexample. Exit 1 (a counterexample) is an expected answer here.
NFPROOF := $(VENV)/bin/nfproof
demo: $(STAMP)
	@mkdir -p out
	@echo "== the NAT under every strategy, up to 16 packets (and any length where induction proves it)"
	$(NFPROOF) verify nat --strategy all --bound 16 --unbounded; test $$? -le 1
	@echo "== the firewall's idle timeouts (3 s) against a 4 s failover (DESIGN.md \"Time\")"
	$(NFPROOF) verify firewall --strategy all --bound 2 --param firewall.timeout=3 --param firewall.udp_timeout=3 \
	    --failover-time 4; test $$? -le 1
	@echo "== a property: the load balancer never moves an established flow"
	$(NFPROOF) verify lb --strategy stateful.async --property sticky-backend --bound 2; test $$? -le 1
	@echo "== a chain, failing as one unit and with any one instance crashing alone; a counterexample names the instance"
	$(NFPROOF) verify 'firewall>nat>lb' --strategy all --bound 3; test $$? -le 1
	@echo "== one strategy per instance: everything synchronous but the balancer: its crash alone is the counterexample"
	$(NFPROOF) verify 'firewall>nat>lb' --strategy stateful.sync,lb=none --bound 3; test $$? -eq 1
	@echo "== the reference runtime: a real capture through firewall>nat>lb, recorded as a trace"
	$(NFPROOF) run 'firewall>nat>lb' --param nat.ports=64512 --pcap tests/data/E02_http_49flows.pcap --seed 7 -o out/demo-run.pcapng
	@echo "== the replay checker: is that recorded run explained by a failure-free execution?"
	$(NFPROOF) replay out/demo-run.pcapng
	@echo "== a real crash: the NAT's primary process killed at input 200 with nothing protected (none), then judged"
	$(NFPROOF) run nat --param nat.ports=64512 --pcap tests/data/E02_http_49flows.pcap --strategy none --fail nat@200 \
	    --seed 1 -o out/demo-crash-none.pcapng
	$(NFPROOF) replay out/demo-crash-none.pcapng; test $$? -le 1
	@echo "== the same crash under output commit with logged choices: a standby process takes over, nothing is seen wrong"
	$(NFPROOF) run nat --param nat.ports=64512 --pcap tests/data/E02_http_49flows.pcap --strategy stateful.commit:8 \
	    --log-choices --fail nat@200 --seed 1 -o out/demo-crash-commit.pcapng
	$(NFPROOF) replay out/demo-crash-commit.pcapng
	@echo "== a counterexample made real: the NAT under stateful.async, written as a capture and a schedule, run by the"
	@echo "   runtime (the primary dies where the proof says, the standby resumes from what replication reached), judged"
	$(NFPROOF) verify nat --strategy stateful.async --bound 4 --reproduce out/demo-cex > /dev/null; test $$? -eq 1
	$(NFPROOF) run nat --pcap out/demo-cex/inputs.pcapng --schedule out/demo-cex/schedule.json -o out/demo-cex/run.pcapng
	$(NFPROOF) replay out/demo-cex/run.pcapng; test $$? -eq 1

# redis-server, tshark and chromium (the replay HTML test): installed with apt-get when missing and running as root.
system-deps:
	@missing=""; for p in redis-server:redis-server tshark:tshark chromium:chromium; do \
	  command -v $${p%%:*} >/dev/null || missing="$$missing $${p##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing) >/dev/null; \
	  else echo "missing:$$missing -- run: sudo apt-get install -y$$missing"; exit 2; fi; fi

# Tests of the code that has a Cython fast path (traces/, runtime/, the replay reader verify/_fast.pyx):
# run again on the pure-Python fallback. (The rest of the verifier is pure Python.)
PACKET_TESTS := tests/test_containers.py tests/test_fast_vs_pure.py tests/test_fuzz_codec.py tests/test_headers.py \
                tests/test_inspect.py tests/test_inspect_progress.py tests/test_trace_format.py \
                tests/test_runtime_frames.py tests/test_runtime_pure.py tests/test_runtime_conformance.py \
                tests/test_cli_run.py tests/test_runtime_paths.py tests/test_replay.py \
                tests/test_replay_agreement.py tests/test_replay_rows.py tests/test_live_ports.py

# The whole suite on the Cython fast path, then the packet-path tests on the pure-Python fallback.
test: $(STAMP) system-deps
	$(PY) -m pytest -q
	NFPROOF_PUREPYTHON=1 $(PY) -m pytest -q $(PACKET_TESTS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Benchmarks (RESULT lines; figures in BENCHMARKS.md). dpkt is a reference for bench/codec.py only.
bench: $(STAMP)
	$(PY) -m pip install -q dpkt
	$(PY) bench/codec.py
	$(PY) bench/verify_nat.py

clean:
	rm -rf $(VENV) build *.egg-info runtime/*.so runtime/*.c traces/*.so traces/*.c verify/*.so verify/*.c
