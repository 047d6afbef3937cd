# Aliyun Assist for Python. `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := .cache/.apt-installed
APT_PACKAGES := rpm createrepo-c dnf nsis osslsigncode apt-utils dpkg-dev gnupg curl wget \
	debootstrap libarchive-tools
WHEELS := .cache/wheels
PYTEST_ARGS ?=

.PHONY: install apt wheels test test-fast demo bench soak lint fmt clean runtime runtime-aarch64

install: $(STAMP) $(APT_STAMP)

# Debian packages the tests drive for real; installed only when a tool is missing.
$(APT_STAMP):
	@mkdir -p .cache
	@missing=""; \
	for tool in rpm:rpm rpmbuild:rpm createrepo_c:createrepo-c dnf:dnf makensis:nsis \
	    osslsigncode:osslsigncode apt-ftparchive:apt-utils dpkg-scanpackages:dpkg-dev gpg:gnupg \
	    curl:curl wget:wget debootstrap:debootstrap bsdtar:libarchive-tools; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,mirror,test]'
	$(BIN)/python -m pkgbuild.wheels --cache $(WHEELS) || echo "wheel cache not filled (offline?); builds will need --no-vendor"
	@touch $@

wheels: $(STAMP)
	$(BIN)/python -m pkgbuild.wheels --cache $(WHEELS)

# --- the agent's own CPython (docs/runtime.md) ---------------------------------------------------
# Built once per recipe into a machine-wide cache (RUNTIME_CACHE) that every clone, CI's included,
# reuses; `runtime` also makes the python-less Debian 11 root of tests/e2e/test_no_python_vm.py.
RUNTIME_CACHE ?= $(or $(ASSIST_RUNTIME_CACHE),/var/cache/aliyun-assist-build)

runtime: install
	sh pkgbuild/runtime/prepare-host.sh $(RUNTIME_CACHE)
	ASSIST_RUNTIME_CACHE=$(RUNTIME_CACHE) $(BIN)/python -m pkgbuild.runtime --arch x86_64

runtime-aarch64: runtime
	@command -v qemu-aarch64-static >/dev/null && [ -d /usr/aarch64-linux-gnu/lib ] || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static libc6-arm64-cross
	ASSIST_RUNTIME_CACHE=$(RUNTIME_CACHE) $(BIN)/python -m pkgbuild.runtime --arch aarch64
# ---------------------------------------------------------------------------------------------------

test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -n 2 -m 'not slow' $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m demo

bench: install
	$(BIN)/python -m bench

soak: install
	$(BIN)/python -m bench.soak

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .cache build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
