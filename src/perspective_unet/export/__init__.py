"""Exporting a trained model: a model folder without pickle (:mod:`~perspective_unet.export.folder`) or an ONNX graph
checked against PyTorch (:mod:`~perspective_unet.export.onnx`), each with the preprocessing files inference reads.

Both take any single model source :func:`perspective_unet.runs.load` takes; the ONNX graph runs in prediction through
:class:`perspective_unet.models.onnx_runtime.OnnxRuntimeModel`.
"""
