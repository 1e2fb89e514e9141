# The README's two commands. Both install what is missing first (idempotent).
.PHONY: setup demo test test-fast lint

setup:
	bash .ci/setup.sh

# End to end on the built-in synthetic data: render, train the setting's runs (done ones are skipped
# on a rerun), report both settings with the paper's numbers beside ours, figures, the baseline, the
# training-free mutual scoring, and the store's HDF5 twin.
DEMO = demo-out

demo: setup
	.venv/bin/pointad render scan --dataset synthetic
	.venv/bin/pointad render build --dataset synthetic --splits test --out $(DEMO)/renders.zarr --workers 2
	.venv/bin/pointad render build --dataset synthetic-real3d --splits test --out $(DEMO)/renders.zarr --workers 2
	.venv/bin/pointad render verify $(DEMO)/renders.zarr
	.venv/bin/pointad render info $(DEMO)/renders.zarr
	.venv/bin/pointad render show $(DEMO)/renders.zarr --sample cookie/test/hole/xyz/000.tiff --out $(DEMO)/cookie-hole.png
	.venv/bin/pointad train sweep --store $(DEMO)/renders.zarr --dataset synthetic --model auto --epochs 3 \
		--runs-dir $(DEMO)/runs
	.venv/bin/pointad eval report --store $(DEMO)/renders.zarr --runs-dir $(DEMO)/runs --setting one-vs-rest \
		--dataset synthetic --protocol both --compare-paper --figures $(DEMO)/figures --html $(DEMO)/html \
		--out $(DEMO)/one-vs-rest.md
	.venv/bin/pointad eval report --store $(DEMO)/renders.zarr --runs-dir $(DEMO)/runs --train-dataset synthetic \
		--setting cross-dataset --dataset synthetic-real3d --out $(DEMO)/cross-dataset.md
	.venv/bin/pointad eval report --store $(DEMO)/renders.zarr --method clip-rendering --model auto \
		--setting one-vs-rest --dataset synthetic --out $(DEMO)/clip-rendering.md
	.venv/bin/pointad eval report --store $(DEMO)/renders.zarr --method mutual-scoring --model auto \
		--setting one-vs-rest --dataset synthetic --out $(DEMO)/mutual-scoring.md
	.venv/bin/pointad render export $(DEMO)/renders.zarr --out $(DEMO)/renders.h5
	cat $(DEMO)/one-vs-rest.md $(DEMO)/cross-dataset.md $(DEMO)/clip-rendering.md $(DEMO)/mutual-scoring.md

# The linter first (seconds), then the whole suite in two pytest processes (pytest-xdist), each module's tests
# in one of them (--dist loadfile: a module's fixtures, e.g. its dask cluster, built once): much of the suite
# waits on the processes it starts, so two overlap (16 -> 11 min on 2 cores, 2026-12-08). pytest exits 5 when it
# collects no test: a broken checkout, so a failure here too.
test: setup lint
	.venv/bin/python -m pytest -q -n 2 --dist loadfile

# The inner loop (README, Testing): the suite less the tests marked slow or faults, about a minute here.
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow and not faults"

lint: setup
	.venv/bin/ruff check .
