"""Active-learning selection of synthetic candidates: MC-dropout scoring, acquisition, rounds, review.

Core code: no web, database or job imports. ``loop.run_selection`` is the entry point; the job
handler in ``backend/jobs/kinds/selection.py`` wraps it.
"""
