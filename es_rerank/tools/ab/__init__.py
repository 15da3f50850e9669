"""Offline A/B and interleaving tools: the report (``es-rerank ab report``) and the
simulation that runs the whole loop (``es-rerank ab simulate``). Never imported by
serving code; scipy and matplotlib are imported here only."""
