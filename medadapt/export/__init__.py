"""Exported runtimes: a backbone or a run folder as ONNX graphs that onnxruntime runs behind the same API.

    medadapt export litemedsam --format onnx --out exported/      # or a run folder instead of the name
    seg = medadapt.Segmenter.from_pretrained("exported/", runtime="onnxruntime")

* :mod:`.onnx_export` -- :func:`export_onnx`: write the graphs and a manifest, check them against PyTorch;
* :mod:`.graphs` -- the torch modules that become the encoder, prompt-decoder and class-decoder graphs.

Reading an export back is :class:`medadapt.inference.onnx_runtime.ExportedBackbone`, one layer down,
so that ``Segmenter`` can build it.
"""

from .onnx_export import CHECK_IMAGE, ExportResult, check_prompts, export_model, export_onnx, load_source

__all__ = ["CHECK_IMAGE", "ExportResult", "check_prompts", "export_model", "export_onnx", "load_source"]
