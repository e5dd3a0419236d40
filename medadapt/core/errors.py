"""The one exception type users catch.

Every mistake a user can make (a missing file, an unsupported format, a box
outside the image, ``predict`` before ``set_image``...) raises
:class:`MedAdaptError` with a message that says what to fix. It subclasses
``ValueError`` so generic handlers keep working; the command line turns it into
one line on stderr and exit status 2.
"""

from __future__ import annotations


class MedAdaptError(ValueError):
    """A user-facing error: the message says what was wrong and how to fix it."""


__all__ = ["MedAdaptError"]
