# The README's two commands. Both install what is missing first (idempotent).
.PHONY: setup demo test

setup:
	bash .ci/setup.sh

# End to end on the built-in synthetic data (what exists of the pipeline so far).
DEMO = demo-out

demo: setup
	.venv/bin/pointad render scan --dataset synthetic
	.venv/bin/pointad render build --dataset synthetic --splits test --out $(DEMO)/renders.zarr --workers 2
	.venv/bin/pointad render build --dataset synthetic-real3d --splits test --out $(DEMO)/renders.zarr --workers 2
	.venv/bin/pointad render verify $(DEMO)/renders.zarr
	.venv/bin/pointad render info $(DEMO)/renders.zarr
	.venv/bin/pointad render show $(DEMO)/renders.zarr --sample cookie/test/hole/xyz/000.tiff --out $(DEMO)/cookie-hole.png
	rm -rf $(DEMO)/run-cookie
	.venv/bin/pointad train run --store $(DEMO)/renders.zarr --dataset synthetic --class cookie --model auto \
		--epochs 3 --out $(DEMO)/run-cookie
	.venv/bin/pointad eval report --store $(DEMO)/renders.zarr --checkpoints $(DEMO)/run-cookie \
		--setting one-vs-rest --dataset synthetic --out $(DEMO)/one-vs-rest.md
	.venv/bin/pointad eval report --store $(DEMO)/renders.zarr --checkpoints $(DEMO)/run-cookie \
		--setting cross-dataset --dataset synthetic-real3d --out $(DEMO)/cross-dataset.md
	cat $(DEMO)/one-vs-rest.md $(DEMO)/cross-dataset.md

# pytest exits 5 when it collects no test: a broken checkout, so a failure here too.
test: setup
	.venv/bin/python -m pytest -q
