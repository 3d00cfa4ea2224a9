"""The study's experiments as runnable recipes (``python -m pipelines.<name>``).

The embedcyto package never imports these; they only call its public functions.
"""
