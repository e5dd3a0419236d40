"""medadapt: adapt frozen SAM-family and CLIP foundation models to new medical segmentation tasks.

Public entry points::

    import medadapt
    seg = medadapt.Segmenter.from_pretrained("litemedsam")
    seg.set_image(image)
    out = seg.predict(boxes=[[x0, y0, x1, y1]])

Subpackages: ``foundation`` (backbones and loading), ``adapters`` (LoRA and
spatial adapters), ``prompts`` (prompt types, simulation, text), ``ssl``
(semi-supervised loop).
"""

from .core.errors import MedAdaptError
from .inference.predictor import Prediction, Segmenter

__version__ = "0.1.0"

__all__ = ["MedAdaptError", "Prediction", "Segmenter", "__version__"]
