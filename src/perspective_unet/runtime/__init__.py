"""The light runtime: prediction from an exported ONNX graph with ONNX Runtime and NumPy, without PyTorch, and what
both prediction paths share.

``pip install "perspective-unet[runtime]"`` installs just this (NumPy, SciPy, nibabel, SimpleITK, Pillow, tqdm, ONNX
Runtime); ``perspective-unet predict --onnx MODEL.onnx -i SCAN -o OUT`` runs it. Modules:
:mod:`~perspective_unet.runtime.inference_settings` (``InferenceSettings``, both paths),
:mod:`~perspective_unet.runtime.kernels` (NumPy pieces both paths use), :mod:`~perspective_unet.runtime.inferers`
(``BaseInferer``, which the PyTorch inferers extend; the NumPy inferers),
:mod:`~perspective_unet.runtime.sliding_window`, :mod:`~perspective_unet.runtime.predictor` (``ScanPredictor``,
``OnnxPredictor``) and :mod:`~perspective_unet.runtime.predict` (files in and out for any predictor;
``predict_onnx``). Nothing here imports
PyTorch, MONAI, the engine or the exports (tests/test_house.py and tests/runtime check it).
"""
