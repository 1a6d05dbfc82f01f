"""Exporting a trained model: a model folder without pickle with a card for the Hub
(:mod:`~perspective_unet.export.folder`), a self-describing ONNX graph checked against PyTorch
(:mod:`~perspective_unet.export.onnx`) or an int8 graph checked on held-out Dice
(:mod:`~perspective_unet.export.quantize`), each with the preprocessing files inference reads.

All take any single model source :func:`perspective_unet.runs.load` takes; a graph runs in prediction through the light
runtime (:mod:`perspective_unet.runtime`, no PyTorch) or, on the PyTorch paths, through
:class:`perspective_unet.models.onnx_runtime.OnnxRuntimeModel`.
"""
