"""``medadapt annotate``: a local web app to segment images with clicks, boxes and scribbles and save the masks.

    from medadapt import Segmenter
    from medadapt.app import Annotator, create_app
    annotator = Annotator(Segmenter.from_pretrained("litemedsam"), "path/to/images")
    app = create_app(annotator)          # a FastAPI app; or medadapt.app.annotate(...) to serve it

:mod:`.sources` lists DATA, :mod:`.store` writes label files and the session
file, :mod:`.encoding` keeps image embeddings, :mod:`.objects` decodes one
object from its prompts, :mod:`.session` ties them together and
:mod:`.server` puts HTTP routes over it. See ``docs/annotate.md``.
"""

from .objects import AnnotatedObject, Answer, Box, Click, Scribble
from .rle import decode_rle, encode_labels, encode_rle
from .server import annotate, create_app, serve
from .session import Annotator
from .sources import Item, Source, UnknownItem, find_items
from .store import LabelStore

__all__ = [
    "AnnotatedObject", "Annotator", "Answer", "Box", "Click", "Item", "LabelStore", "Scribble", "Source",
    "UnknownItem", "annotate", "create_app", "decode_rle", "encode_labels", "encode_rle", "find_items", "serve",
]
