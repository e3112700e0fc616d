# Two entry points, each doing its own set-up in .venv (only python3 >= 3.11 is needed):
#   make run    the main job        make test    the test suite
PYTHON ?= python3
# Test worker processes; each takes whole test files, so module fixtures are built once.
TEST_WORKERS ?= 2
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test setup benchmark report clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ovmse run

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=10

# The study's pages (docs/results/) and their blocks in docs/results.md, from experiments/results/.
SPECS := methods table1 fig1 fig2_fig3 fig4 table2 cql_online transition
WORKSTATION_SPECS := table1 fig1 fig2_fig3 fig4 cql_online transition lam_end
report: $(STAMP)
	for spec in $(SPECS); do \
	  $(VENV)/bin/ovmse experiment report $$spec --scale cpu --embed docs/results.md || exit 1; \
	done
	for spec in $(WORKSTATION_SPECS); do \
	  $(VENV)/bin/ovmse experiment report $$spec --scale workstation --embed docs/results.md \
	    || exit 1; \
	done

benchmark: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_online.py

clean:
	rm -rf $(VENV) runs .pytest_cache
