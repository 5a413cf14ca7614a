# Everything fleetsync needs, set up by the two targets the README starts with.
#   make demo   install what is missing, migrate a sample tree with the API on, print the result
#   make test   install what is missing, run the whole test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# What fleetsync runs with, and what only the tests need (the dashboard test
# renders the page in headless Chromium and reads the screenshot with tesseract;
# tests/test_metrics.py checks monitoring/ and /metrics with promtool, from `prometheus`;
# tests/test_custody.py checks the recorded xxh128 checksums with xxhsum, from `xxhash`).
DEBS      := rsync openssh-server openssh-client sqlite3 fpart iproute2 procps python3-venv
TEST_DEBS := chromium tesseract-ocr fonts-dejavu-core prometheus xxhash
# ansible-lint in a venv of its own (requirements-lint.txt says why).
LINT_VENV := .venv-lint
# Only the benchmarks' slow mount (bench/slowfs.py) needs FUSE: not make demo/test.
BENCH_DEBS := fuse3 python3-fusepy
DEMO   := demo

.PHONY: demo test test-loaded deps test-deps bench-deps debs venv lint-venv lint clean bench

deps: debs venv

test-deps: deps lint-venv
	@$(MAKE) --no-print-directory debs DEBS="$(TEST_DEBS)"

# Debian packages, only when one is missing and only as root (else say what to install).
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null)) \
	    || { echo "make: could not install:$$missing"; exit 1; }; \
	  else echo "make: please install (as root):$$missing"; exit 1; fi; \
	fi

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-installed only when setup.cfg changes.
$(VENV)/.installed: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

$(LINT_VENV)/.installed: requirements-lint.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found"; exit 1; }
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install -q -r requirements-lint.txt
	touch $@

lint-venv: $(LINT_VENV)/.installed

# The playbooks with ansible-lint's strictest profile (tests/test_lint.py runs the same).
lint: lint-venv
	$(LINT_VENV)/bin/ansible-lint --offline --profile production playbooks/

test: test-deps
	$(PY) -m pytest -q -p no:cacheprovider tests

# The whole suite with every core kept busy by a busy loop, as on a loaded machine:
# no test may depend on timing (the loops end with the suite).
test-loaded: test-deps
	bash -c 'loops=; for i in $$(seq $$(nproc)); do (while :; do :; done) & loops="$$loops $$!"; \
	  done; trap "kill $$loops" EXIT; $(PY) -m pytest -q -p no:cacheprovider tests; exit $$?'

demo: deps
	$(PY) -m fleetsync.controller.demo --dir $(DEMO)

bench-deps: deps
	@$(MAKE) --no-print-directory debs DEBS="$(BENCH_DEBS)"

# One benchmark at a time on a shared machine: every one runs under the same lock.
bench: bench-deps
	flock /tmp/fleetsync-bench.lock $(PY) bench/walk.py
	flock /tmp/fleetsync-bench.lock $(PY) bench/slowmount.py
	flock /tmp/fleetsync-bench.lock $(PY) bench/copy.py
	flock /tmp/fleetsync-bench.lock $(PY) bench/api.py

clean:
	rm -rf $(DEMO) bench/out .pytest_cache
