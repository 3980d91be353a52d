"""Domain operations on the database and the file store: datasets and variants, pools, selections,
benchmarks. Routes, job handlers and the experiment runner call these; they raise ``DomainError``s,
never HTTP or job errors, and take plain sessions, stores and ``Hooks``."""
