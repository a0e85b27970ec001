# Two commands on a fresh clone: `make demo` and `make test`. Both set everything up first.
comma  := ,
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= gateway,cluster,jupyter,onnx,torch,tensorflow,models,dev
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
HOST   ?= 127.0.0.1
PORT   ?= 8800
GPU_PYTHON ?= $(PY)
# The JupyterLab panel: built from labextension/ with npm (package-lock.json pins every package) into
# server_ext/labextension, which the wheel ships as share/jupyter/labextensions/@ooblex/jupyterlab-console.
LABEXT := server_ext/labextension/package.json
LABSRC := $(wildcard labextension/src/*.js labextension/style/*.css) labextension/package.json \
          ooblex/gateway/static/console-view.js ooblex/gateway/static/console-view.css
NODE_MODULES := labextension/node_modules/.package-lock.json
# JupyterHub's proxy for tests/test_jupyterhub.py (configurable-http-proxy, pinned by tests/hub/package-lock.json)
HUB_PROXY := tests/hub/node_modules/.package-lock.json

# The versions the tests passed with (pip install -c): make setup, CI and deploy/Dockerfile install from it.
CONSTRAINTS := constraints.txt
# make test-latest: the newest releases, in a venv of their own, through the WebRTC tests
LATEST := .venv-latest
WEBRTC_TESTS := tests/test_webrtc_internals.py tests/test_webrtc_units.py tests/test_fec.py tests/test_vp8.py \
                tests/test_gateway_webrtc.py tests/test_audio_webrtc.py tests/test_turn.py

.PHONY: setup demo test test-deploy test-latest constraints lint bench bench-gpu gpu-check clean wheel

setup: $(STAMP) $(LABEXT) $(HUB_PROXY)

$(NODE_MODULES): labextension/package-lock.json $(STAMP)
	cd labextension && npm ci --no-audit --no-fund
	touch $@

$(HUB_PROXY): tests/hub/package-lock.json
	cd tests/hub && npm ci --no-audit --no-fund
	touch $@

$(LABEXT): $(LABSRC) $(NODE_MODULES) $(STAMP)
	cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" npm run build
	# as `jupyter labextension develop` does: the venv's JupyterLab loads the build in place
	install -d $(VENV)/share/jupyter/labextensions/@ooblex
	ln -sfn $(abspath server_ext/labextension) $(VENV)/share/jupyter/labextensions/@ooblex/jupyterlab-console
	touch $@

wheel: setup
	$(PY) -m pip wheel --no-deps -w dist .

$(STAMP): pyproject.toml .ci/system-deps $(CONSTRAINTS)
	bash .ci/system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	# editable installs skip data-files: place the server extension's enabling config as a wheel install does
	# (and drop the one that enabled it under its old top-level name, server_ext, in venvs made before)
	rm -f $(VENV)/etc/jupyter/jupyter_server_config.d/server_ext.json
	install -D -m 644 server_ext/jupyter-config/jupyter_server_config.d/ooblex_server_ext.json \
		$(VENV)/etc/jupyter/jupyter_server_config.d/ooblex_server_ext.json
	touch $@

demo: setup
	$(VENV)/bin/ooblex demo --host $(HOST) --port $(PORT)

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q -rs -m "not deploy"

# The container image and the cluster run from it (podman; minutes): tests/test_deploy_image.py. CI runs it
# after make test. The Debian base image is built once and kept (podman image exists: skipped).
test-deploy: setup
	bash .ci/system-deps deploy
	$(PY) -m pytest -q -rs -m deploy tests/test_deploy_image.py

# The newest aiortc/aioice/av (past pyproject's bounds) and everything else unconstrained, through the WebRTC
# tests: an upgrade's breakage shows here first. Widen the bounds and `make constraints` once it passes.
test-latest:
	bash .ci/system-deps
	test -x $(LATEST)/bin/python || python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade -e '.[gateway,cluster,dev]'
	$(LATEST)/bin/python -m pip install -q --upgrade aiortc aioice av
	$(LATEST)/bin/python -m pip list 2>/dev/null | grep -i -E '^(aiortc|aioice|av) '
	$(LATEST)/bin/python -m ooblex.webrtc.internals
	$(LATEST)/bin/python -m pytest -q -rs -p no:cacheprovider $(WEBRTC_TESTS)

# After an upgrade passes: the working venv's exact versions become the constraints (ooblex itself left out, and
# anything installed from a local file: its path exists on this machine only)
constraints: setup
	{ grep '^#' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable | grep -v -i -e '^ooblex' -e ' @ file:'; } \
		> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

bench: setup
	$(PY) benchmarks/engine_overhead.py
	$(PY) benchmarks/cluster.py
	$(PY) benchmarks/dead_worker.py
	$(PY) benchmarks/webrtc_rtt.py
	$(PY) benchmarks/models.py
	$(PY) benchmarks/console_history.py
	$(PY) benchmarks/capacity.py
	$(PY) benchmarks/gateways.py
	$(PY) benchmarks/av_sync.py

# On a CUDA machine, with any Python that has CUDA torch + numpy, simplejpeg, tqdm (docs/performance.md)
bench-gpu:
	$(GPU_PYTHON) benchmarks/gpu.py

# The GPU tests (they skip without one; they need pytest, onnxruntime), then a shorter benchmark run
gpu-check:
	$(GPU_PYTHON) -m pytest -q -rs -p no:cacheprovider tests/test_adapters.py -k "gpu or cuda or nvjpeg"
	$(GPU_PYTHON) benchmarks/gpu.py --seconds 3

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache test-artifacts labextension/node_modules tests/hub/node_modules \
		server_ext/labextension dist
