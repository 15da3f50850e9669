"""``python -m es_rerank.cli ...``: the same as ``es-rerank ...``."""

from . import main

main()
