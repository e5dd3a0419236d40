"""The weak-to-strong semi-supervised loop (mean teacher, promptable pseudo-labels).

Not implemented yet: this package is reserved for it so that it never becomes a
top-level ``ssl`` that would shadow the standard library. See the README's
Status section.
"""
