"""maskx: Mask^X R-CNN — segment every class from partial mask supervision.

Parts: ``model`` (pure PyTorch), ``training``, ``training.export`` and
``service`` (ONNX Runtime only; never imports torch). This top-level module imports
nothing heavy so that the service installs and runs without torch.
"""

__version__ = "0.1.0"
