"""Guest modules: their sources and the reproducible build that turns them into ``.wasm``."""
