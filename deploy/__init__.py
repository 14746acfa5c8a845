"""Deployment of trained classifiers: ONNX / TorchScript export, parity check and CPU benchmark."""
