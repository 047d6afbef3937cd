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

.PHONY: install apt wheels postgres test test-fast demo bench soak lint fmt clean runtime runtime-aarch64

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
	@command -v qemu-aarch64-static >/dev/null && [ -f /usr/aarch64-linux-gnu/lib/libgcc_s.so.1 ] || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static libc6-arm64-cross \
	    libgcc-s1-arm64-cross
	ASSIST_RUNTIME_CACHE=$(RUNTIME_CACHE) $(BIN)/python -m pkgbuild.runtime --arch aarch64
# ---------------------------------------------------------------------------------------------------


# The PostgreSQL tests need a server on 127.0.0.1:5432 that trusts the user postgres, and a
# database "test". Where none answers: install Debian's postgresql, let its clusters trust the
# user postgres on loopback (a test machine only: no password), start them, create "test".
postgres:
	@if ! command -v pg_isready >/dev/null 2>&1 || ! pg_isready -h 127.0.0.1 -p 5432 -q; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  if ! command -v pg_ctlcluster >/dev/null 2>&1; then \
	    echo "installing Debian's postgresql for the PostgreSQL tests"; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql; \
	  fi; \
	  for hba in /etc/postgresql/*/main/pg_hba.conf; do \
	    grep -q '^host all postgres 127.0.0.1/32 trust' "$$hba" && continue; \
	    echo "letting postgres connect from loopback without a password: $$hba (old copy: $$hba.orig)"; \
	    $$SUDO cp -n "$$hba" "$$hba.orig"; \
	    { printf 'local all postgres trust\nhost all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust\n'; \
	      cat "$$hba.orig"; } | $$SUDO tee "$$hba.new" >/dev/null && $$SUDO mv "$$hba.new" "$$hba"; \
	  done; \
	  for conf in /etc/postgresql/*/main; do \
	    ver=$$(basename "$$(dirname "$$conf")"); \
	    $$SUDO pg_ctlcluster --skip-systemctl-redirect "$$ver" main restart; \
	  done; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done; \
	fi
	@pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL does not answer on 127.0.0.1:5432 ; its tests will be skipped"; exit 0; }
	@psql -h 127.0.0.1 -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 || \
	  psql -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE test'

test: install postgres
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: install postgres
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
