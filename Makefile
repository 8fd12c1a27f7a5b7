# Innkeeper: the two commands a user needs are `make demo` and `make test`.
# Every install step lives here so a fresh clone works with nothing but python3 and network access to PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv models browser balancer demo test lint bench clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

models: venv
	$(BIN)/innkeeper models

demo: models
	$(BIN)/innkeeper demo

# The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download is unreachable).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1; } \
	  || echo "chromium could not be installed from Debian's packages: the browser tests will skip"; }

# The scale-out test puts Debian's haproxy in front of two workers.
balancer:
	@command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || { $(SUDO) apt-get install -y -q haproxy >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q haproxy >/dev/null 2>&1; } \
	  || echo "haproxy could not be installed from Debian's packages: the scale-out test will skip"; }

test: models browser balancer
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

bench: models
	$(BIN)/python benchmarks/llm.py

clean:
	rm -rf $(VENV) .innkeeper
