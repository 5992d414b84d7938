"""Training data: COCO-format and Visual Genome datasets, the class vocabulary, data loaders."""
