"""Import of Detectron (Caffe2) Mask^X R-CNN weights files: the authors' released models."""

from training.detectron.importer import (
    DETECTRON_CONVENTIONS,
    DetectronImportError,
    ImportReport,
    import_detectron,
    infer_architecture,
)
from training.detectron.pickle_io import DetectronFileError, load_detectron_pickle, read_cfg

__all__ = [
    "DETECTRON_CONVENTIONS",
    "DetectronFileError",
    "DetectronImportError",
    "ImportReport",
    "import_detectron",
    "infer_architecture",
    "load_detectron_pickle",
    "read_cfg",
]
