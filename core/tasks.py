"""Task names: the strings of ``medmnist.INFO[flag]["task"]``, used by every dataset."""

BINARY = "binary-class"
MULTI_CLASS = "multi-class"
MULTI_LABEL = "multi-label, binary-class"
