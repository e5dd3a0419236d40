"""medadapt: adapt frozen SAM-family and CLIP foundation models to new medical segmentation tasks.

Public entry points::

    import medadapt
    seg = medadapt.Segmenter.from_pretrained("litemedsam")
    seg.set_image(image)
    out = seg.predict(boxes=[[x0, y0, x1, y1]])

    from medadapt.recipes import finetune, load_config
    run = finetune(load_config("configs/hc18/5labeled_ssl.yaml"))

Layers, each importing only from those below it (``docs/design.md``):
``core`` (errors, device, atomic files, config helpers), ``io`` (medical
images, overlays), ``data`` (datasets by case), ``prompts`` (the Prompts
container, regions, simulated and text prompts), ``foundation`` (backbones,
processor, the heads that ride on them), ``adapters`` (LoRA, spatial and
context adapters), ``inference`` (the Segmenter), ``training`` (the trainer
and its extension points), ``ssl`` (the semi-supervised loop), ``recipes``
and ``evaluation``, and the command line.
"""

from .core.errors import MedAdaptError
from .inference.predictor import Prediction, Segmenter

__version__ = "0.1.0"

__all__ = ["MedAdaptError", "Prediction", "Segmenter", "__version__"]
